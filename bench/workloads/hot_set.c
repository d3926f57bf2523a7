/* hot_set: random 8-byte writes over the buffer, 90% of them into a hot set of 5% of
 * it (one twentieth, contiguous) and the rest uniform over the whole buffer (hot_set_only.c
 * builds this file with every write in the hot set). Every 2
 * seconds of the timed part the hot set moves to another twentieth of the buffer, 7
 * twentieths (35% of the buffer) further on, wrapping around, so it visits every part.
 * The move is decided at batch boundaries (the time at the end of the previous batch).
 * Usage: hot_set --mib M --seconds S [--fork-every-ms T] [--seed X]
 * (protocol and output: workload.h) */
#include "workload.h"

#define BATCH_OPS 131072
#define PARTS 20                  /* the hot set is one part: 5% */
#define STEP 7                    /* parts between successive hot sets (coprime to PARTS) */
#define MOVE_NS 2000000000ULL     /* the hot set moves every 2 s */
#ifndef HOT_THRESHOLD
#define HOT_THRESHOLD 58982       /* writes into the hot set, out of 65536: 90% */
#define WORKLOAD_NAME "hot_set"
#endif

static struct {
    uint64_t *buf;
    size_t nwords, part_words;
    uint64_t first_part;
    uint64_t rng;
} s;

static void batch(void *ctx, int tid, uint64_t elapsed_ns)
{
    (void)ctx;
    (void)tid;
    uint64_t part = (s.first_part + (elapsed_ns / MOVE_NS) * STEP) % PARTS;
    uint64_t *buf = s.buf, *hot = s.buf + part * s.part_words, rng = s.rng;
    size_t n = s.nwords, hn = s.part_words;
    for (int i = 0; i < BATCH_OPS; i++) {
        uint64_t r = wl_rand(&rng);
        if ((r & 0xffff) < HOT_THRESHOLD) hot[wl_below(r, hn)] = r;
        else buf[wl_below(r, n)] = r;
    }
    s.rng = rng;
}

int main(int argc, char **argv)
{
    struct wl_opts o = wl_parse(argc, argv, WORKLOAD_NAME, 1, 1);
    size_t bytes = o.mib * WL_MiB;
    s.nwords = bytes / sizeof(uint64_t);
    s.part_words = s.nwords / PARTS;
    s.buf = wl_word_buffer(bytes, o.seed);
    s.first_part = wl_splitmix64(o.seed ^ 0x686f74ULL) % PARTS;
    s.rng = wl_rng_seed(o.seed, 0);
    wl_add_region(s.buf, bytes);
    wl_run(&o, BATCH_OPS, batch, NULL);
    wl_report(wl_checksum_words(s.buf, s.nwords));
    return 0;
}
