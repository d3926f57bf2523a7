/* uniform_random: uniformly random 8-byte writes over the buffer (xorshift64* RNG).
 * Usage: uniform_random --mib M --seconds S [--fork-every-ms T] [--seed X]
 * (protocol and output: workload.h) */
#include "workload.h"

#define BATCH_OPS 65536

static struct {
    uint64_t *buf;
    size_t nwords;
    uint64_t rng;
} s;

static void batch(void *ctx, int tid, uint64_t elapsed_ns)
{
    (void)ctx;
    (void)tid;
    (void)elapsed_ns;
    uint64_t *buf = s.buf, rng = s.rng;
    size_t n = s.nwords;
    for (int i = 0; i < BATCH_OPS; i++) {
        uint64_t r = wl_rand(&rng);
        buf[wl_below(r, n)] = r;
    }
    s.rng = rng;
}

int main(int argc, char **argv)
{
    struct wl_opts o = wl_parse(argc, argv, "uniform_random", 1, 1);
    size_t bytes = o.mib * WL_MiB;
    s.nwords = bytes / sizeof(uint64_t);
    s.buf = wl_word_buffer(bytes, o.seed);
    s.rng = wl_rng_seed(o.seed, 0);
    wl_add_region(s.buf, bytes);
    wl_run(&o, BATCH_OPS, batch, NULL);
    wl_report(wl_checksum_words(s.buf, s.nwords));
    return 0;
}
