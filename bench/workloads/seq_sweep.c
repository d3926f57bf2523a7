/* seq_sweep: a sequential sweep writing over the buffer, wrapping around. One operation
 * adds to one 64-bit word, every 8th word (one write per cache line), so a batch walks
 * BATCH_OPS * 64 bytes of the buffer in address order.
 * Usage: seq_sweep --mib M --seconds S [--fork-every-ms T] [--seed X]
 * (protocol and output: workload.h) */
#include "workload.h"

#define BATCH_OPS 131072 /* 8 MiB of the buffer per batch */
#define STRIDE 8        /* words: one per cache line */

static struct {
    uint64_t *buf;
    size_t nwords;
    size_t pos;
    uint64_t pass;
} s;

static void batch(void *ctx, int tid, uint64_t elapsed_ns)
{
    (void)ctx;
    (void)tid;
    (void)elapsed_ns;
    uint64_t *buf = s.buf;
    size_t pos = s.pos, n = s.nwords;
    uint64_t add = s.pass * 2 + 1;
    for (int i = 0; i < BATCH_OPS; i++) {
        buf[pos] += add;
        pos += STRIDE;
        if (pos >= n) {
            pos -= n; /* n is a multiple of STRIDE: back to word 0 */
            add = ++s.pass * 2 + 1;
        }
    }
    s.pos = pos;
}

int main(int argc, char **argv)
{
    struct wl_opts o = wl_parse(argc, argv, "seq_sweep", 1, 1);
    size_t bytes = o.mib * WL_MiB;
    s.nwords = bytes / sizeof(uint64_t);
    s.buf = wl_word_buffer(bytes, o.seed);
    wl_add_region(s.buf, bytes);
    wl_run(&o, BATCH_OPS, batch, NULL);
    wl_report(wl_checksum_words(s.buf, s.nwords));
    return 0;
}
