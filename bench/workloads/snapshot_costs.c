/* Workloads of `memshadow-bench snapshot-costs`: what snapshots cost, measured inside
 * the program with clock_gettime(CLOCK_MONOTONIC). Snapshots are asked for through the
 * C API (memshadow.h), so the program runs under LD_PRELOAD=libmemshadow.so.
 *
 * Usage:
 *   snapshot_costs protect MIB cold|warm
 *       Touches MIB MiB (one malloc block, a write per page), times fork() (the
 *       parent's pause; the child exits at once), writes every page again, then times
 *       two snapshots in a row with nothing written in between. `warm` takes a
 *       snapshot before allocating, so the engine is already running and the timed
 *       first snapshot is the protect pass alone.
 *       Prints fork_ns, snap1_ns, snap2_ns.
 *   snapshot_costs trap MIB seq|shuffled
 *       Touches MIB MiB, writes one byte per page in the given page order (baseline,
 *       no snapshot), takes a snapshot, and does the same writes again (each first
 *       write to a protected page traps).
 *       Prints pages, base_ns, trap_ns.
 *   snapshot_costs sweep MIB SWEEPS
 *       Touches MIB MiB, then SWEEPS times adds to every 8th 64-bit word (one write per
 *       cache line). Runs without the shim too.
 *       Prints work_ns, checksum.
 *
 * If SNAPSHOT_COSTS_STATS names a directory and the shim publishes its stats page in
 * MEMSHADOW_DIR, the page is copied to SNAPSHOT_COSTS_STATS/LABEL.stats at the points
 * the bench reads counters from (labels: before, snap1, snap2, trap, sweep_start,
 * sweep_end).
 * The copy uses only system calls and the stack: it writes no tracked memory.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "memshadow.h"
#include "stats_copy.h"

#define MiB (1024UL * 1024UL)
#define PAGE 4096UL

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void die(const char *what)
{
    fprintf(stderr, "snapshot_costs: %s: %s\n", what, strerror(errno));
    exit(1);
}

static void usage(void)
{
    fprintf(stderr, "usage: snapshot_costs protect MIB cold|warm | trap MIB seq|shuffled | "
                    "sweep MIB SWEEPS\n");
    exit(2);
}

static long long snapshot(void)
{
    long long v = memshadow_snapshot();
    if (v < 0)
        die("memshadow_snapshot (is the program running under libmemshadow.so?)");
    return v;
}

/* Copies the shim's stats page to $SNAPSHOT_COSTS_STATS/LABEL.stats, if both are there. */
static void dump_stats(const char *label)
{
    if (copy_stats_page("SNAPSHOT_COSTS_STATS", label) < 0)
        die("copy the stats page");
}

/* MIB MiB from malloc, every page written once (populated, writable). */
static volatile unsigned char *touched(size_t mib)
{
    volatile unsigned char *p = malloc(mib * MiB);
    if (!p)
        die("malloc");
    for (size_t off = 0; off < mib * MiB; off += PAGE)
        p[off] = 1;
    return p;
}

static void protect(size_t mib, int warm)
{
    if (warm)
        snapshot();
    volatile unsigned char *p = touched(mib);

    uint64_t t0 = now_ns();
    pid_t pid = fork();
    uint64_t fork_ns = now_ns() - t0;
    if (pid < 0)
        die("fork");
    if (pid == 0)
        _exit(0);
    int status;
    if (waitpid(pid, &status, 0) != pid)
        die("waitpid");
    /* The parent's pages are copy-on-write shared until written: make them plainly
     * writable again, as before the fork. */
    for (size_t off = 0; off < mib * MiB; off += PAGE)
        p[off] = 2;

    dump_stats("before");
    t0 = now_ns();
    snapshot();
    uint64_t snap1_ns = now_ns() - t0;
    dump_stats("snap1");
    t0 = now_ns();
    snapshot();
    uint64_t snap2_ns = now_ns() - t0;
    dump_stats("snap2");

    printf("fork_ns %llu\nsnap1_ns %llu\nsnap2_ns %llu\n", (unsigned long long)fork_ns,
           (unsigned long long)snap1_ns, (unsigned long long)snap2_ns);
}

static uint64_t xorshift(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

/* Writes one byte to each page, in the order of `order`; returns the time taken. */
static uint64_t write_pages(volatile unsigned char *p, const uint32_t *order, size_t pages,
                            unsigned char value)
{
    uint64_t t0 = now_ns();
    for (size_t i = 0; i < pages; i++)
        p[(size_t)order[i] * PAGE + 8] = value;
    return now_ns() - t0;
}

static void trap(size_t mib, int shuffled)
{
    size_t pages = mib * MiB / PAGE;
    uint32_t *order = malloc(pages * sizeof *order);
    if (!order)
        die("malloc");
    for (size_t i = 0; i < pages; i++)
        order[i] = (uint32_t)i;
    if (shuffled) {
        uint64_t seed = 0x9e3779b97f4a7c15ull;
        for (size_t i = pages - 1; i > 0; i--) {
            size_t j = xorshift(&seed) % (i + 1);
            uint32_t t = order[i];
            order[i] = order[j];
            order[j] = t;
        }
    }
    volatile unsigned char *p = touched(mib);
    uint64_t base_ns = write_pages(p, order, pages, 3);
    snapshot();
    uint64_t trap_ns = write_pages(p, order, pages, 4);
    dump_stats("trap");
    printf("pages %zu\nbase_ns %llu\ntrap_ns %llu\n", pages, (unsigned long long)base_ns,
           (unsigned long long)trap_ns);
}

static void sweep(size_t mib, long sweeps)
{
    size_t words = mib * MiB / sizeof(uint64_t);
    volatile unsigned char *bytes = touched(mib);
    uint64_t *w = (uint64_t *)bytes;
    dump_stats("sweep_start");
    uint64_t t0 = now_ns();
    for (long s = 0; s < sweeps; s++) {
        for (size_t i = 0; i < words; i += 8)
            w[i] += (uint64_t)s + 1;
    }
    uint64_t work_ns = now_ns() - t0;
    dump_stats("sweep_end");
    uint64_t sum = 0;
    for (size_t i = 0; i < words; i += 8)
        sum += w[i];
    printf("work_ns %llu\nchecksum %llu\n", (unsigned long long)work_ns, (unsigned long long)sum);
}

int main(int argc, char **argv)
{
    if (argc != 4)
        usage();
    long mib = atol(argv[2]);
    if (mib < 1)
        usage();
    if (strcmp(argv[1], "protect") == 0 && (!strcmp(argv[3], "cold") || !strcmp(argv[3], "warm")))
        protect((size_t)mib, !strcmp(argv[3], "warm"));
    else if (strcmp(argv[1], "trap") == 0 && (!strcmp(argv[3], "seq") || !strcmp(argv[3], "shuffled")))
        trap((size_t)mib, !strcmp(argv[3], "shuffled"));
    else if (strcmp(argv[1], "sweep") == 0 && atol(argv[3]) >= 1)
        sweep((size_t)mib, atol(argv[3]));
    else
        usage();
    return 0;
}
