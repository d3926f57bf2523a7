/* clone_pause: how long the page-table copy of a clone takes by which thread makes it
 * (bench/RESULTS.md, the headline's stalls). No shim.
 *
 * One writer thread writes 8-byte words at random over MIB MiB flat out; every PERIOD ms
 * a child is made with a raw clone (exit signal 0, as a holder is) that exits at once,
 * and the parent times the clone call. By MODE:
 *   other   a second thread makes the clone while the writer writes on (a holder: the
 *           shim's epoch thread clones while the program runs)
 *   writer  the writer makes the clone itself between two batches (redis: the thread
 *           that writes forks)
 * Prints the clones' median and longest time and the writer's writes per second.
 *
 * Build: cc -O2 -pthread -o /tmp/clone_pause bench/probes/clone_pause.c
 * Run:   /tmp/clone_pause MODE MIB PERIOD_MS SECONDS   (e.g. other 256 300 5)
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define BATCH 65536
#define MAX_CLONES 4096

static uint64_t *words;
static size_t nwords;
static volatile int stop;
static int writer_clones;
static double period_s;
static double clone_ms[MAX_CLONES];
static int clones;
static long writes;

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

/* A raw clone whose child exits at once; the parent reaps it and notes how long the
 * clone call took. */
static void clone_once(void)
{
    double t0 = now();
    long pid = syscall(SYS_clone, 0, NULL, NULL, NULL, NULL);
    if (pid == 0)
        syscall(SYS_exit_group, 0);
    double t1 = now();
    if (pid < 0) {
        perror("clone");
        exit(1);
    }
    waitpid((pid_t)pid, NULL, __WALL);
    if (clones < MAX_CLONES)
        clone_ms[clones++] = (t1 - t0) * 1e3;
}

static void *writer(void *arg)
{
    (void)arg;
    uint64_t x = 88172645463325252ull;
    double next = now() + period_s;
    long c = 0;
    while (!stop) {
        for (int k = 0; k < BATCH; k++) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            words[x % nwords] = x;
        }
        c += BATCH;
        if (writer_clones && now() >= next) {
            clone_once();
            next += period_s;
        }
    }
    writes = c;
    return NULL;
}

static int by_value(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
    if (argc < 5) {
        fprintf(stderr, "usage: clone_pause other|writer MIB PERIOD_MS SECONDS\n");
        return 2;
    }
    writer_clones = strcmp(argv[1], "writer") == 0;
    size_t mib = (size_t)atoi(argv[2]);
    period_s = atoi(argv[3]) / 1e3;
    double seconds = atof(argv[4]);
    nwords = mib * 1024 * 1024 / 8;
    words = mmap(NULL, nwords * 8, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (words == MAP_FAILED) {
        perror("mmap");
        return 1;
    }
    memset(words, 1, nwords * 8);
    pthread_t t;
    pthread_create(&t, NULL, writer, NULL);
    double end = now() + seconds;
    if (!writer_clones) {
        double next = now() + period_s;
        while (now() < end) {
            struct timespec nap = {0, 1000000};
            nanosleep(&nap, NULL);
            if (now() >= next) {
                clone_once();
                next += period_s;
            }
        }
    } else {
        while (now() < end) {
            struct timespec nap = {0, 10000000};
            nanosleep(&nap, NULL);
        }
    }
    stop = 1;
    pthread_join(t, NULL);
    qsort(clone_ms, clones, sizeof clone_ms[0], by_value);
    printf("%-6s %5zu MiB every %s ms: %d clones, median %.1f ms, longest %.1f ms; %.1f M writes/s\n",
           argv[1], mib, argv[3], clones, clones ? clone_ms[clones / 2] : 0.0,
           clones ? clone_ms[clones - 1] : 0.0, writes / seconds / 1e6);
    return 0;
}
