/* scatter_writer: a program that writes scattered pages hard, the kind that frequent
 * snapshots slow down most (every first write to a page after a snapshot traps, and
 * random writes defeat prediction). Used by inspector/tests/governor.rs.
 *
 * Usage: scatter_writer [MIB [MILLIONS]]: MILLIONS million 8-byte writes (default 6) at
 * uniformly random places of a MIB MiB buffer (default 32), each write's value a function
 * of its index; then the buffer is checked against a replay of the same writes and its
 * FNV-1a checksum printed. Deterministic output; exit 0.
 */
#include "testutil.h"

int main(int argc, char **argv)
{
    size_t mib = argc > 1 ? strtoul(argv[1], NULL, 10) : 32;
    size_t millions = argc > 2 ? strtoul(argv[2], NULL, 10) : 6;
    if (mib == 0 || millions == 0)
        DIE("usage: scatter_writer [MIB [MILLIONS]], both above 0");
    size_t words = mib * 1024 * 1024 / sizeof(uint64_t);
    size_t writes = millions * 1000000;
    uint64_t *buf = calloc(words, sizeof(uint64_t));
    uint64_t *replay = calloc(words, sizeof(uint64_t));
    if (!buf || !replay)
        DIE("cannot allocate 2 x %zu MiB", mib);

    uint64_t rng = 42;
    for (size_t i = 0; i < writes; i++) {
        uint64_t r = tu_next(&rng);
        buf[r % words] = r ^ i;
    }
    /* The replay writes in the same order: the last write to each word wins in both. */
    rng = 42;
    for (size_t i = 0; i < writes; i++) {
        uint64_t r = tu_next(&rng);
        replay[r % words] = r ^ i;
    }
    size_t bad = 0;
    for (size_t w = 0; w < words; w++)
        bad += buf[w] != replay[w];
    CHECK(bad == 0, "%zu words differ from the replay", bad);
    printf("scatter_writer: %zu writes over %zu MiB, checksum %016llx\n", writes, mib,
           (unsigned long long)tu_fnv(TU_FNV_INIT, buf, words * sizeof(uint64_t)));
    free(replay);
    free(buf);
    return tu_finish("scatter_writer", 0);
}
