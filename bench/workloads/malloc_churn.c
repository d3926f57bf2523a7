/* Allocation-heavy multi-threaded workload: each thread keeps a window of live blocks
 * of mixed sizes, replacing one per step (malloc, write the block, free an old one),
 * and hands a fraction of its blocks to the next thread to free (cross-thread frees).
 * Usage: malloc_churn THREADS STEPS_PER_THREAD
 * Prints one line: ops=<total malloc+free calls> checksum=<value>. */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define WINDOW 4096
#define HANDOFF 64

struct mailbox {
    pthread_mutex_t lock;
    void *slots[HANDOFF];
    int n;
};

static int nthreads;
static long steps;
static struct mailbox *boxes;

static uint64_t next_rand(uint64_t *s) {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

static size_t pick_size(uint64_t r) {
    /* Mostly small blocks, some medium, a few large (mmap-backed at 256 KiB). */
    unsigned k = r % 1000;
    if (k < 900) return 16 + (r >> 10) % 240;
    if (k < 995) return 256 + (r >> 10) % 8000;
    return 256 * 1024;
}

static void *worker(void *arg) {
    long id = (long)arg;
    uint64_t seed = 0x9e3779b97f4a7c15ull ^ (uint64_t)(id + 1);
    void **win = calloc(WINDOW, sizeof(void *));
    uint64_t sum = 0;
    struct mailbox *next = &boxes[(id + 1) % nthreads];
    struct mailbox *mine = &boxes[id];
    for (long i = 0; i < steps; i++) {
        uint64_t r = next_rand(&seed);
        size_t slot = r % WINDOW;
        size_t size = pick_size(r >> 16);
        unsigned char *p = malloc(size);
        memset(p, (int)(i & 0xff), size < 64 ? size : 64);
        p[size - 1] = (unsigned char)i;
        sum += p[0] + p[size - 1];
        void *old = win[slot];
        win[slot] = p;
        if (old == NULL) continue;
        if ((r & 15) == 0) { /* hand this block to the next thread to free */
            pthread_mutex_lock(&next->lock);
            if (next->n < HANDOFF) { next->slots[next->n++] = old; old = NULL; }
            pthread_mutex_unlock(&next->lock);
        }
        free(old);
        if ((i & 255) == 0) {
            pthread_mutex_lock(&mine->lock);
            for (int k = 0; k < mine->n; k++) free(mine->slots[k]);
            mine->n = 0;
            pthread_mutex_unlock(&mine->lock);
        }
    }
    for (size_t k = 0; k < WINDOW; k++) free(win[k]);
    free(win);
    return (void *)(uintptr_t)sum;
}

int main(int argc, char **argv) {
    nthreads = argc > 1 ? atoi(argv[1]) : 4;
    steps = argc > 2 ? atol(argv[2]) : 2000000;
    if (nthreads < 1 || steps < 1) {
        fprintf(stderr, "usage: malloc_churn THREADS STEPS_PER_THREAD\n");
        return 2;
    }
    boxes = calloc((size_t)nthreads, sizeof *boxes);
    for (int t = 0; t < nthreads; t++) pthread_mutex_init(&boxes[t].lock, NULL);
    pthread_t *th = malloc(sizeof(pthread_t) * (size_t)nthreads);
    for (long t = 0; t < nthreads; t++) pthread_create(&th[t], NULL, worker, (void *)t);
    uint64_t sum = 0;
    for (int t = 0; t < nthreads; t++) {
        void *ret;
        pthread_join(th[t], &ret);
        sum += (uint64_t)(uintptr_t)ret;
    }
    for (int t = 0; t < nthreads; t++) {
        for (int k = 0; k < boxes[t].n; k++) free(boxes[t].slots[k]);
    }
    printf("ops=%ld checksum=%llu\n", 2L * nthreads * steps, (unsigned long long)sum);
    free(th);
    free(boxes);
    return 0;
}
