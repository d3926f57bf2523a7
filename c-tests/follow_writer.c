/* follow_writer: the workload of inspector/tests/follow.rs. A buffer of MIB MiB filled
 * with pseudo-random bytes (incompressible: a base of it costs about MIB MiB), of which a
 * hot set of HOT pages is rewritten whole, with new pseudo-random bytes, every 10 ms; the
 * rest is never written again. So each recorded version is a delta of the hot set, the
 * chain grows long, and a base plus its chain costs far more than one image.
 *
 * Usage: follow_writer MIB HOT SECONDS
 * Prints "ready" once the buffer is filled, runs SECONDS seconds, prints "done" and exits 0.
 */
#include "testutil.h"
#include <time.h>

/* Incompressible bytes, a function of seed. */
static void fill_random(unsigned char *p, size_t n, uint64_t seed)
{
    uint64_t state = seed;
    for (size_t i = 0; i + 8 <= n; i += 8) {
        uint64_t w = tu_next(&state);
        memcpy(p + i, &w, 8);
    }
}

int main(int argc, char **argv)
{
    if (argc != 4)
        DIE("usage: follow_writer MIB HOT SECONDS");
    size_t mib = strtoul(argv[1], NULL, 10), hot = strtoul(argv[2], NULL, 10);
    long secs = strtol(argv[3], NULL, 10);
    size_t bytes = mib << 20, pages = bytes / 4096;
    if (mib == 0 || hot == 0 || hot > pages || secs <= 0)
        DIE("follow_writer: bad arguments");
    unsigned char *buf = malloc(bytes);
    if (!buf)
        DIE("cannot allocate %zu MiB", mib);
    fill_random(buf, bytes, 1);
    printf("ready\n");
    fflush(stdout);
    struct timespec start, now, pause = {0, 10 * 1000 * 1000};
    clock_gettime(CLOCK_MONOTONIC, &start);
    uint64_t round = 1;
    do {
        /* The hot set: every 17th page from the middle, wrapping (scattered). */
        for (size_t i = 0; i < hot; i++) {
            size_t page = (pages / 2 + i * 17) % pages;
            fill_random(buf + page * 4096, 4096, round * 1000003 + i);
        }
        round++;
        nanosleep(&pause, NULL);
        clock_gettime(CLOCK_MONOTONIC, &now);
    } while (now.tv_sec - start.tv_sec < secs);
    printf("done\n");
    return 0;
}
