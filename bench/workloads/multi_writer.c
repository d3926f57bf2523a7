/* multi_writer: N threads (--threads, default 4) doing uniformly random 8-byte writes,
 * 7 in 8 into the thread's own slice and 1 in 8 into a region all threads share. The
 * buffer (one allocation) is the shared region (its first eighth) followed by N equal
 * slices. Writes to the shared region are relaxed atomic stores (plain stores on x86;
 * they race by design, last writer wins). Operations are summed over the threads and
 * the batch latencies of all threads go into one histogram; thread 0 also does the
 * forking with --fork-every-ms, while the others keep writing.
 * Usage: multi_writer --mib M --seconds S [--threads N] [--fork-every-ms T] [--seed X]
 * (protocol and output: workload.h) */
#include "workload.h"

#define BATCH_OPS 131072
#define DEFAULT_THREADS 4

struct per_thread {
    uint64_t *slice;
    size_t slice_words;
    uint64_t rng;
} __attribute__((aligned(64)));

static struct {
    uint64_t *buf;
    size_t nwords;
    uint64_t *shared;
    size_t shared_words;
    struct per_thread *t;
} s;

static void batch(void *ctx, int tid, uint64_t elapsed_ns)
{
    (void)ctx;
    (void)elapsed_ns;
    struct per_thread *t = &s.t[tid];
    uint64_t *slice = t->slice, *shared = s.shared, rng = t->rng;
    size_t n = t->slice_words, sn = s.shared_words;
    for (int i = 0; i < BATCH_OPS; i++) {
        uint64_t r = wl_rand(&rng);
        if (r & 7) slice[wl_below(r, n)] = r;
        else __atomic_store_n(&shared[wl_below(r, sn)], r, __ATOMIC_RELAXED);
    }
    t->rng = rng;
}

int main(int argc, char **argv)
{
    struct wl_opts o = wl_parse(argc, argv, "multi_writer", DEFAULT_THREADS, WL_MAX_THREADS);
    size_t bytes = o.mib * WL_MiB;
    s.nwords = bytes / sizeof(uint64_t);
    s.shared_words = s.nwords / 8;
    size_t slice_words = (s.nwords - s.shared_words) / (size_t)o.threads;
    if (slice_words == 0) wl_usage_error("--mib %llu is too small for %d threads",
                                         (unsigned long long)o.mib, o.threads);
    s.buf = wl_word_buffer(bytes, o.seed);
    s.shared = s.buf;
    s.t = wl_alloc(sizeof(struct per_thread) * (size_t)o.threads);
    for (int i = 0; i < o.threads; i++) {
        s.t[i].slice = s.buf + s.shared_words + (size_t)i * slice_words;
        s.t[i].slice_words = slice_words;
        s.t[i].rng = wl_rng_seed(o.seed, (uint64_t)i);
    }
    wl_add_region(s.buf, bytes);
    wl_run(&o, BATCH_OPS, batch, NULL);
    wl_report(wl_checksum_words(s.buf, s.nwords));
    return 0;
}
