/* Shared code of the memshadow-bench workloads (bench/workloads/NAME.c): the command
 * line, the timed loop of operation batches, batch latencies, the fork()-based
 * snapshots that emulate Redis BGSAVE, and the report.
 *
 * Protocol (memshadow-bench relies on it exactly):
 *   NAME --mib M --seconds S [--threads N] [--fork-every-ms T [--fork-dump DIR]]
 *        [--seed X]
 *   Bad arguments: one line on stderr starting with "NAME:" and exit 2.
 *   The workload allocates and initialises its M MiB of data, then runs operations for
 *   S seconds in batches of a fixed number of operations. The clock
 *   (clock_gettime(CLOCK_MONOTONIC)) is read once per batch, at its end; a batch's
 *   latency is the time from the end of the previous batch of the same thread to its
 *   own end, so whatever happens between two batches (a fork() pause, reaping a child,
 *   being descheduled) lands in the latency of the next one.
 *   --fork-every-ms T (T > 0): between batches of thread 0, when T ms have passed since
 *   the last fork and no child is alive, fork(); the child reads every byte of the
 *   workload's data (copying it into a 1 MiB buffer, as a serializer would) and writes
 *   it to /dev/null in 1 MiB chunks, then _exit(0). The parent's fork() call is timed.
 *   --fork-dump DIR (with --fork-every-ms): the child writes the same bytes to a durable
 *   file instead of /dev/null: a new file DIR/fork-PID.tmp (O_CREAT|O_EXCL|O_NOFOLLOW,
 *   0600), fsynced, renamed over DIR/last.dump (only the last dump is kept), then DIR
 *   fsynced, as the store of `memshadow run --record` writes each object. DIR is opened
 *   once (O_DIRECTORY|O_NOFOLLOW) before the timed part.
 *   A child that fails (staging buffer, open, write, fsync, rename) makes the parent
 *   fail: "NAME: a fork child failed ..." on stderr, exit 1.
 *   Output on stdout, nothing else:
 *     ops N / seconds X / ops_per_sec X / batch_ops N / batch_us_p50 X /
 *     batch_us_p99 X / batch_us_max X / forks N / fork_pause_us_max X / dumps N /
 *     dump_bytes N / checksum HEX
 *   (dumps: children that wrote all of their dump; dump_bytes: the bytes they wrote, in
 *   all, counted by each child in a page shared with the parent.)
 *   Exit 0. Runtime failures (allocation, fork, threads): "NAME: ..." on stderr, exit 1.
 *   Under the shim with WL_STATS_DIR set, the shim's stats page is copied to
 *   $WL_STATS_DIR/timed_start.stats as the timed part starts (after a pause of 2.5
 *   snapshot periods, at most 5 s; the period is WL_SNAPSHOT_MS if set, else
 *   MEMSHADOW_INTERVAL_MS; without either, no pause).
 *
 * A workload: parse with wl_parse(), allocate and initialise, register its data for the
 * fork child with wl_add_region() (or wl_set_dumper() for data that is not a few flat
 * regions), call wl_run() with a batch function, compute a checksum from its data and
 * call wl_report().
 */
#ifndef MEMSHADOW_BENCH_WORKLOAD_H
#define MEMSHADOW_BENCH_WORKLOAD_H

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "stats_copy.h"

#define WL_FN static __attribute__((unused))
#define WL_MiB (1024ULL * 1024ULL)
#define WL_CHUNK (1024UL * 1024UL)
#define WL_MAX_THREADS 256
#define WL_MAX_REGIONS 64

struct wl_opts {
    uint64_t mib;           /* --mib, required, >= 1 */
    double seconds;         /* --seconds, required, > 0 */
    int threads;            /* --threads, >= 1 */
    uint64_t fork_every_ms; /* --fork-every-ms, 0 = never */
    uint64_t seed;          /* --seed */
    const char *fork_dump;  /* --fork-dump DIR, NULL = /dev/null */
};

static const char *wl_name = "workload";

WL_FN void wl_usage_error(const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fprintf(stderr, "%s: %s (usage: %s --mib M --seconds S [--threads N] "
                    "[--fork-every-ms T [--fork-dump DIR]] [--seed X])\n", wl_name, msg,
            wl_name);
    exit(2);
}

WL_FN void wl_die(const char *what)
{
    fprintf(stderr, "%s: %s: %s\n", wl_name, what, strerror(errno));
    exit(1);
}

/* ---- random numbers ---- */

WL_FN inline uint64_t wl_splitmix64(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

/* xorshift64*: state must not be 0 (wl_rng_seed sees to it). */
WL_FN inline uint64_t wl_rand(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * 0x2545f4914f6cdd1dULL;
}

WL_FN inline uint64_t wl_rng_seed(uint64_t seed, uint64_t stream)
{
    uint64_t s = wl_splitmix64(seed ^ wl_splitmix64(stream + 1));
    return s ? s : 0x9e3779b97f4a7c15ULL;
}

/* A uniform value in [0, n) from 64 random bits (multiply-high, no division). */
WL_FN inline uint64_t wl_below(uint64_t r, uint64_t n)
{
    return (uint64_t)(((unsigned __int128)r * n) >> 64);
}

/* ---- command line ---- */

static uint64_t wl_parse_u64(const char *opt, const char *s, uint64_t min, uint64_t max)
{
    char *end;
    if (*s == '-' || *s == '\0') wl_usage_error("%s: not a number: '%s'", opt, s);
    errno = 0;
    unsigned long long v = strtoull(s, &end, 0);
    if (errno || *end) wl_usage_error("%s: not a number: '%s'", opt, s);
    if (v < min || v > max)
        wl_usage_error("%s: %llu out of range [%llu, %llu]", opt, v,
                       (unsigned long long)min, (unsigned long long)max);
    return v;
}

/* max_threads 1: a single-threaded workload, which accepts only --threads 1. */
WL_FN struct wl_opts wl_parse(int argc, char **argv, const char *name, int default_threads,
                              int max_threads)
{
    static const struct option longopts[] = {
        {"mib", required_argument, 0, 'm'},
        {"seconds", required_argument, 0, 's'},
        {"threads", required_argument, 0, 't'},
        {"fork-every-ms", required_argument, 0, 'f'},
        {"seed", required_argument, 0, 'r'},
        {"fork-dump", required_argument, 0, 'd'},
        {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0},
    };
    struct wl_opts o = {0, 0.0, default_threads, 0, 0x6d656d736861646fULL, NULL};
    int have_mib = 0, have_seconds = 0;
    wl_name = name;
    opterr = 0;
    for (;;) {
        int c = getopt_long(argc, argv, "", longopts, NULL);
        if (c == -1) break;
        switch (c) {
        case 'm':
            o.mib = wl_parse_u64("--mib", optarg, 1, 1ULL << 24);
            have_mib = 1;
            break;
        case 's': {
            char *end;
            errno = 0;
            o.seconds = strtod(optarg, &end);
            if (errno || *end || end == optarg || !(o.seconds > 0.0) || o.seconds > 1e6)
                wl_usage_error("--seconds: not a positive number of seconds: '%s'", optarg);
            have_seconds = 1;
            break;
        }
        case 't':
            o.threads = (int)wl_parse_u64("--threads", optarg, 1, WL_MAX_THREADS);
            if (o.threads > max_threads)
                wl_usage_error("--threads: %d, but this workload runs %d thread%s at most",
                               o.threads, max_threads, max_threads == 1 ? "" : "s");
            break;
        case 'f':
            o.fork_every_ms = wl_parse_u64("--fork-every-ms", optarg, 0, 1ULL << 40);
            break;
        case 'r':
            o.seed = wl_parse_u64("--seed", optarg, 0, UINT64_MAX);
            break;
        case 'd':
            if (!*optarg) wl_usage_error("--fork-dump: an empty directory name");
            o.fork_dump = optarg;
            break;
        case 'h':
            wl_usage_error("help");
            break;
        default:
            if (optopt)
                wl_usage_error("bad option or missing value: --%s",
                               optopt == 'm' ? "mib" : optopt == 's' ? "seconds"
                               : optopt == 't' ? "threads" : optopt == 'f' ? "fork-every-ms"
                               : optopt == 'r' ? "seed" : optopt == 'd' ? "fork-dump"
                               : "?");
            wl_usage_error("unknown option: '%s'", argv[optind - 1]);
        }
    }
    if (optind < argc) wl_usage_error("unexpected argument: '%s'", argv[optind]);
    if (!have_mib) wl_usage_error("--mib is required");
    if (!have_seconds) wl_usage_error("--seconds is required");
    if (o.fork_dump && !o.fork_every_ms)
        wl_usage_error("--fork-dump goes with --fork-every-ms T (T > 0)");
    return o;
}

/* ---- memory ---- */

/* malloc, aligned to a cache line, failing loudly. */
WL_FN void *wl_alloc(size_t bytes)
{
    void *p = NULL;
    int err = posix_memalign(&p, 64, bytes);
    if (err) {
        errno = err;
        wl_die("allocating the data");
    }
    return p;
}

/* A buffer of `bytes` (a multiple of 8) filled with 64-bit words derived from `seed`,
 * every page touched before the timed part. */
WL_FN uint64_t *wl_word_buffer(size_t bytes, uint64_t seed)
{
    uint64_t *buf = wl_alloc(bytes);
    for (size_t i = 0; i < bytes / sizeof(uint64_t); i++) buf[i] = wl_splitmix64(seed + i);
    return buf;
}

/* ---- what the fork child reads ---- */

struct wl_region {
    const void *p;
    size_t len;
};

static struct wl_region wl_regions[WL_MAX_REGIONS];
static int wl_nregions;
static void (*wl_dumper)(void *ctx);
static void *wl_dumper_ctx;

/* The child's staging buffer and /dev/null or its dump file (child side only). */
static unsigned char *wl_stage;
static size_t wl_stage_used;
static int wl_null_fd = -1;
static int wl_out_fd = -1;
static uint64_t wl_out_bytes;
/* --fork-dump: the directory, opened once by the parent. */
static int wl_dump_dir = -1;

/* Counted by the children, read by the parent once they are reaped: a page shared
 * across fork() (one child at a time writes it). */
struct wl_dump_count {
    uint64_t dumps;
    uint64_t bytes;
};
static struct wl_dump_count *wl_dumped;

/* Exit codes of a failed child (the parent names the step). */
#define WL_CHILD_WRITE 3
#define WL_CHILD_STAGE 4
#define WL_CHILD_OPEN 5
#define WL_CHILD_FSYNC 6
#define WL_CHILD_RENAME 7

WL_FN void wl_add_region(const void *p, size_t len)
{
    if (wl_nregions == WL_MAX_REGIONS) {
        fprintf(stderr, "%s: too many regions\n", wl_name);
        exit(1);
    }
    wl_regions[wl_nregions].p = p;
    wl_regions[wl_nregions].len = len;
    wl_nregions++;
}

/* For data that is not a few flat regions: fn runs in the fork child and hands every
 * byte of the data to wl_dump_bytes(). */
WL_FN void wl_set_dumper(void (*fn)(void *ctx), void *ctx)
{
    wl_dumper = fn;
    wl_dumper_ctx = ctx;
}

static void wl_stage_flush(void)
{
    size_t off = 0;
    while (off < wl_stage_used) {
        ssize_t n = write(wl_out_fd, wl_stage + off, wl_stage_used - off);
        if (n < 0) {
            if (errno == EINTR) continue;
            _exit(WL_CHILD_WRITE);
        }
        off += (size_t)n;
    }
    wl_out_bytes += wl_stage_used;
    wl_stage_used = 0;
}

/* Child side: copy bytes into the 1 MiB staging buffer, writing it out when full. */
WL_FN void wl_dump_bytes(const void *p, size_t len)
{
    const unsigned char *src = p;
    while (len) {
        size_t room = WL_CHUNK - wl_stage_used;
        size_t n = len < room ? len : room;
        memcpy(wl_stage + wl_stage_used, src, n);
        wl_stage_used += n;
        src += n;
        len -= n;
        if (wl_stage_used == WL_CHUNK) wl_stage_flush();
    }
}

static void wl_child(void)
{
    char tmp[64];
    wl_stage = mmap(NULL, WL_CHUNK, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                    -1, 0);
    if (wl_stage == MAP_FAILED) _exit(WL_CHILD_STAGE);
    wl_stage_used = 0;
    wl_out_bytes = 0;
    wl_out_fd = wl_null_fd;
    if (wl_dump_dir >= 0) {
        snprintf(tmp, sizeof tmp, "fork-%d.tmp", (int)getpid());
        wl_out_fd = openat(wl_dump_dir, tmp,
                           O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
        if (wl_out_fd < 0) _exit(WL_CHILD_OPEN);
    }
    if (wl_dumper) {
        wl_dumper(wl_dumper_ctx);
    } else {
        for (int i = 0; i < wl_nregions; i++) wl_dump_bytes(wl_regions[i].p, wl_regions[i].len);
    }
    wl_stage_flush();
    if (wl_dump_dir >= 0) {
        if (fsync(wl_out_fd) < 0) _exit(WL_CHILD_FSYNC);
        if (renameat(wl_dump_dir, tmp, wl_dump_dir, "last.dump") < 0) _exit(WL_CHILD_RENAME);
        if (fsync(wl_dump_dir) < 0) _exit(WL_CHILD_FSYNC);
    }
    __atomic_fetch_add(&wl_dumped->bytes, wl_out_bytes, __ATOMIC_SEQ_CST);
    __atomic_fetch_add(&wl_dumped->dumps, 1, __ATOMIC_SEQ_CST);
    _exit(0);
}

/* Parent side: a reaped child must have written all of its dump. */
static void wl_check_child(int status)
{
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0) return;
    const char *step = "";
    if (WIFEXITED(status)) {
        switch (WEXITSTATUS(status)) {
        case WL_CHILD_WRITE: step = " (writing its dump)"; break;
        case WL_CHILD_STAGE: step = " (mapping its staging buffer)"; break;
        case WL_CHILD_OPEN: step = " (creating its dump file)"; break;
        case WL_CHILD_FSYNC: step = " (fsync)"; break;
        case WL_CHILD_RENAME: step = " (renaming its dump into place)"; break;
        }
        fprintf(stderr, "%s: a fork child failed%s: exit status %d\n", wl_name, step,
                WEXITSTATUS(status));
    } else {
        fprintf(stderr, "%s: a fork child failed: status %#x\n", wl_name, status);
    }
    exit(1);
}

/* ---- batch latencies: a log-bucket histogram, 64 sub-buckets per power of two
 * (under 1.6% relative error), exact below 128 ns ---- */

#define WL_HSUB 64
#define WL_HBUCKETS ((64 - 6) * WL_HSUB)

struct wl_hist {
    uint64_t count[WL_HBUCKETS];
    uint64_t max;
    uint64_t n;
};

static inline unsigned wl_hist_index(uint64_t v)
{
    if (v < 2 * WL_HSUB) return (unsigned)v;
    unsigned e = 63u - (unsigned)__builtin_clzll(v);
    unsigned shift = e - 6;
    return (shift + 1) * WL_HSUB + (unsigned)((v >> shift) & (WL_HSUB - 1));
}

static inline void wl_hist_add(struct wl_hist *h, uint64_t v)
{
    h->count[wl_hist_index(v)]++;
    h->n++;
    if (v > h->max) h->max = v;
}

/* The middle of the bucket holding the value of rank ceil(q * n), capped at the max. */
static double wl_hist_quantile(const struct wl_hist *h, double q)
{
    if (h->n == 0) return 0.0;
    uint64_t rank = (uint64_t)(q * (double)h->n);
    if ((double)rank < q * (double)h->n) rank++;
    if (rank < 1) rank = 1;
    uint64_t seen = 0;
    for (unsigned i = 0; i < WL_HBUCKETS; i++) {
        seen += h->count[i];
        if (seen >= rank) {
            double lo, width;
            if (i < 2 * WL_HSUB) {
                lo = i;
                width = 1;
            } else {
                unsigned shift = i / WL_HSUB - 1;
                lo = (double)((uint64_t)(WL_HSUB + i % WL_HSUB) << shift);
                width = (double)(1ULL << shift);
            }
            double mid = lo + (width - 1) / 2.0;
            return mid > (double)h->max ? (double)h->max : mid;
        }
    }
    return (double)h->max;
}

/* ---- the timed loop ---- */

static inline uint64_t wl_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

/* fn(ctx, tid, elapsed_ns) does batch_ops operations; elapsed_ns is the time since the
 * start of the timed part at the end of the thread's previous batch. */
typedef void (*wl_batch_fn)(void *ctx, int tid, uint64_t elapsed_ns);

struct wl_thread {
    struct wl_hist hist;
    uint64_t batches;
    uint64_t end_ns;
    int tid;
    pthread_t handle;
} __attribute__((aligned(64)));

static struct {
    const struct wl_opts *opts;
    uint64_t batch_ops;
    wl_batch_fn fn;
    void *ctx;
    uint64_t start_ns, deadline_ns;
    pthread_barrier_t barrier;
    struct wl_thread *threads;
    /* results */
    uint64_t ops, forks, fork_pause_max_ns;
    double seconds;
    struct wl_hist all;
    int done;
} wl;

static void wl_thread_loop(struct wl_thread *t)
{
    const uint64_t fork_every_ns = wl.opts->fork_every_ms * 1000000ULL;
    const int forker = t->tid == 0 && fork_every_ns > 0;
    pid_t child = 0;
    uint64_t last_fork = 0;
    if (wl.opts->threads > 1) pthread_barrier_wait(&wl.barrier);
    uint64_t prev = wl.opts->threads > 1 ? wl_now_ns() : wl.start_ns;
    if (forker) last_fork = prev;
    for (;;) {
        wl.fn(wl.ctx, t->tid, prev - wl.start_ns);
        uint64_t now = wl_now_ns();
        wl_hist_add(&t->hist, now - prev);
        t->batches++;
        prev = now;
        if (now >= wl.deadline_ns) break;
        if (!forker) continue;
        if (child > 0) {
            int status;
            pid_t r = waitpid(child, &status, WNOHANG);
            if (r == child) {
                wl_check_child(status);
                child = 0;
            } else if (r < 0 && errno != EINTR) {
                wl_die("waitpid");
            }
        }
        if (child == 0 && now - last_fork >= fork_every_ns) {
            pid_t pid = fork();
            if (pid == 0) wl_child();
            uint64_t after = wl_now_ns();
            if (pid < 0) wl_die("fork");
            child = pid;
            last_fork = after;
            wl.forks++;
            if (after - now > wl.fork_pause_max_ns) wl.fork_pause_max_ns = after - now;
        }
    }
    t->end_ns = prev;
    if (child > 0) {
        int status;
        while (waitpid(child, &status, 0) < 0) {
            if (errno != EINTR) wl_die("waitpid");
        }
        wl_check_child(status);
    }
}

static void *wl_thread_main(void *arg)
{
    wl_thread_loop(arg);
    return NULL;
}

/* Runs the timed part: opts->threads threads (thread 0 on the calling thread), each
 * calling fn for batches of batch_ops operations until opts->seconds have passed. */
WL_FN void wl_run(const struct wl_opts *opts, uint64_t batch_ops, wl_batch_fn fn, void *ctx)
{
    int n = opts->threads;
    /* The shim's counters as the timed part starts, for the bench to count what happened
     * in the timed part only (the buffer was filled under the shim too). First two and
     * a half snapshot periods pass without writes, so that the epochs that saw the fill
     * end and the prefetcher's verdicts on them (counted at the next epoch) are in. */
    const char *interval = getenv("WL_SNAPSHOT_MS");
    if (!interval) interval = getenv("MEMSHADOW_INTERVAL_MS");
    if (getenv("WL_STATS_DIR") && interval) {
        long ms = atol(interval);
        if (ms > 0) usleep((useconds_t)(ms < 2000 ? ms : 2000) * 2500);
    }
    if (copy_stats_page("WL_STATS_DIR", "timed_start") < 0) wl_die("copy the stats page");
    wl.opts = opts;
    wl.batch_ops = batch_ops;
    wl.fn = fn;
    wl.ctx = ctx;
    wl.threads = wl_alloc(sizeof(struct wl_thread) * (size_t)n);
    memset(wl.threads, 0, sizeof(struct wl_thread) * (size_t)n);
    if (opts->fork_every_ms > 0) {
        wl_null_fd = open("/dev/null", O_WRONLY | O_CLOEXEC);
        if (wl_null_fd < 0) wl_die("/dev/null");
        wl_dumped = mmap(NULL, sizeof *wl_dumped, PROT_READ | PROT_WRITE,
                         MAP_SHARED | MAP_ANONYMOUS, -1, 0);
        if (wl_dumped == MAP_FAILED) wl_die("mapping the dump counters");
        if (opts->fork_dump) {
            wl_dump_dir = open(opts->fork_dump, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
            if (wl_dump_dir < 0) wl_die(opts->fork_dump);
        }
    }
    if (n > 1 && pthread_barrier_init(&wl.barrier, NULL, (unsigned)n)) wl_die("barrier");
    for (int i = 0; i < n; i++) wl.threads[i].tid = i;
    for (int i = 1; i < n; i++) {
        int err = pthread_create(&wl.threads[i].handle, NULL, wl_thread_main, &wl.threads[i]);
        if (err) {
            errno = err;
            wl_die("pthread_create");
        }
    }
    wl.start_ns = wl_now_ns();
    wl.deadline_ns = wl.start_ns + (uint64_t)(opts->seconds * 1e9);
    wl_thread_loop(&wl.threads[0]);
    uint64_t end = wl.threads[0].end_ns;
    for (int i = 1; i < n; i++) {
        pthread_join(wl.threads[i].handle, NULL);
        if (wl.threads[i].end_ns > end) end = wl.threads[i].end_ns;
    }
    memset(&wl.all, 0, sizeof wl.all);
    wl.ops = 0;
    for (int i = 0; i < n; i++) {
        struct wl_thread *t = &wl.threads[i];
        wl.ops += t->batches * batch_ops;
        for (unsigned b = 0; b < WL_HBUCKETS; b++) wl.all.count[b] += t->hist.count[b];
        wl.all.n += t->hist.n;
        if (t->hist.max > wl.all.max) wl.all.max = t->hist.max;
    }
    wl.seconds = (double)(end - wl.start_ns) / 1e9;
    if (n > 1) pthread_barrier_destroy(&wl.barrier);
    wl.done = 1;
}

WL_FN void wl_report(uint64_t checksum)
{
    if (!wl.done) {
        fprintf(stderr, "%s: wl_report before wl_run\n", wl_name);
        exit(1);
    }
    printf("ops %llu\n", (unsigned long long)wl.ops);
    printf("seconds %.3f\n", wl.seconds);
    printf("ops_per_sec %.1f\n", wl.seconds > 0 ? (double)wl.ops / wl.seconds : 0.0);
    printf("batch_ops %llu\n", (unsigned long long)wl.batch_ops);
    printf("batch_us_p50 %.1f\n", wl_hist_quantile(&wl.all, 0.50) / 1e3);
    printf("batch_us_p99 %.1f\n", wl_hist_quantile(&wl.all, 0.99) / 1e3);
    printf("batch_us_max %.1f\n", (double)wl.all.max / 1e3);
    printf("forks %llu\n", (unsigned long long)wl.forks);
    printf("fork_pause_us_max %.1f\n", (double)wl.fork_pause_max_ns / 1e3);
    printf("dumps %llu\n", (unsigned long long)(wl_dumped ? wl_dumped->dumps : 0));
    printf("dump_bytes %llu\n", (unsigned long long)(wl_dumped ? wl_dumped->bytes : 0));
    printf("checksum %016llx\n", (unsigned long long)checksum);
    if (fflush(stdout) != 0) wl_die("stdout");
}

/* A checksum of flat words (order-sensitive, cheap). */
WL_FN uint64_t wl_checksum_words(const uint64_t *w, size_t n)
{
    uint64_t a = 0x243f6a8885a308d3ULL, b = 0x13198a2e03707344ULL;
    for (size_t i = 0; i < n; i++) {
        a += w[i];
        b += a ^ (a >> 29);
    }
    return wl_splitmix64(a ^ wl_splitmix64(b));
}

#endif
