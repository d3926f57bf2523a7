/* wipe_writer: a scattered writer that also keeps a small MADV_WIPEONFORK buffer (as
 * an RNG state or a key kept out of children is kept), for what keeping such memory on
 * shadows beside holders changes under MEMSHADOW_BACKEND=auto (bench/RESULTS.md,
 * "Memory a holder does not keep"). Run it with no shim, and under `memshadow run` with
 * one shim build and another (MEMSHADOW_LIB).
 *
 * One thread writes 8-byte words at random over MIB MiB (populated first) flat out for
 * SECONDS s, in batches of 65,536 writes; every 64th write also goes to a random word of
 * a WIPE_KIB KiB buffer marked MADV_WIPEONFORK (0: no such buffer). Prints the writes per
 * second and the worst stall (the longest batch less the median one, as the benchmark
 * reports it).
 *
 * Build: cc -O2 -o /tmp/wipe_writer bench/probes/wipe_writer.c
 * Run:   /tmp/wipe_writer MIB SECONDS [WIPE_KIB]   (e.g. 256 8 64)
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#define BATCH 65536
#define MAX_BATCHES (1 << 20)

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static int by_value(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: wipe_writer MIB SECONDS [WIPE_KIB]\n");
        return 2;
    }
    size_t bytes = (size_t)atol(argv[1]) << 20;
    double seconds = atof(argv[2]);
    size_t wipe_bytes = argc > 3 ? (size_t)atol(argv[3]) << 10 : 64 << 10;
    uint64_t *mem = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) {
        perror("mmap");
        return 1;
    }
    memset(mem, 1, bytes);
    uint64_t *wipe = NULL;
    if (wipe_bytes > 0) {
        wipe = mmap(NULL, wipe_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (wipe == MAP_FAILED || madvise(wipe, wipe_bytes, MADV_WIPEONFORK) != 0) {
            perror("wipe buffer");
            return 1;
        }
        memset(wipe, 2, wipe_bytes);
    }
    size_t words = bytes / 8, wipe_words = wipe_bytes / 8;
    static double batch_s[MAX_BATCHES];
    size_t batches = 0;
    uint64_t x = 88172645463325252ULL, writes = 0;
    double start = now_s(), end = start + seconds, last = start;
    while (last < end && batches < MAX_BATCHES) {
        for (int i = 0; i < BATCH; i++) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            mem[x % words] = x;
            if (wipe && (i & 63) == 0)
                wipe[(x >> 20) % wipe_words] = x;
        }
        writes += BATCH;
        double t = now_s();
        batch_s[batches++] = t - last;
        last = t;
    }
    double longest = 0;
    for (size_t i = 0; i < batches; i++)
        if (batch_s[i] > longest)
            longest = batch_s[i];
    qsort(batch_s, batches, sizeof batch_s[0], by_value);
    double median = batches ? batch_s[batches / 2] : 0;
    printf("writes/s %.0f worst_stall_ms %.1f\n", writes / (last - start),
           (longest - median) * 1e3);
    return 0;
}
