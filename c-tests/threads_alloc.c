/* threads_alloc: 16 threads allocating and freeing concurrently, handing blocks to one
 * another through a shared queue so that many blocks are reallocated and freed by a
 * thread other than the one that allocated them. Also a thread with a caller-provided
 * stack from malloc, one that ends with pthread_exit, and two threads still blocked in
 * read() when main returns. All totals printed are independent of scheduling. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <unistd.h>

#include "testutil.h"

#define NTHREADS 16
#define ITERS 12000
#define LOCAL 64

struct block {
    struct block *next; /* queue link while handed off */
    uint64_t seed;
    size_t size;        /* bytes of pattern after the header */
    uint64_t data[];
};

struct totals {
    uint64_t allocs, frees, bytes, handed_off, checksum;
};

static pthread_mutex_t qlock = PTHREAD_MUTEX_INITIALIZER;
static struct block *qhead;
static size_t qlen;

static pthread_mutex_t tlock = PTHREAD_MUTEX_INITIALIZER;
static struct totals all;
static int failures_seen;

static size_t pick_size(uint64_t *rng)
{
    uint64_t r = tu_next(rng);
    if (r % 100 == 0)
        return 8 * (8192 + (r >> 8) % 32768); /* 64 KiB .. 320 KiB */
    return 8 * (1 + (r >> 8) % 256);           /* 8 .. 2 KiB */
}

static struct block *make(uint64_t seed, size_t size)
{
    struct block *b = (seed & 1) ? calloc(1, sizeof *b + size) : malloc(sizeof *b + size);
    if (!b)
        return NULL;
    b->next = NULL;
    b->seed = seed;
    b->size = size;
    tu_fill_words(b->data, size, seed);
    return b;
}

/* Verify, possibly grow through realloc, then free. Returns the block's checksum term. */
static uint64_t consume(struct block *b, int grow, int *bad)
{
    size_t n = tu_verify_words(b->data, b->size, b->seed);
    if (n != b->size)
        (*bad)++;
    uint64_t term = b->seed * 31 + b->size;
    if (grow) {
        struct block *g = realloc(b, sizeof *b + b->size * 2 + 64);
        if (!g) {
            (*bad)++;
            free(b);
            return term;
        }
        if (tu_verify_words(g->data, g->size, g->seed) != g->size)
            (*bad)++;
        b = g;
    }
    free(b);
    return term;
}

static void push(struct block *b)
{
    pthread_mutex_lock(&qlock);
    b->next = qhead;
    qhead = b;
    qlen++;
    pthread_mutex_unlock(&qlock);
}

static struct block *pop(void)
{
    pthread_mutex_lock(&qlock);
    struct block *b = qhead;
    if (b) {
        qhead = b->next;
        qlen--;
    }
    pthread_mutex_unlock(&qlock);
    return b;
}

static void *worker(void *arg)
{
    unsigned id = (unsigned)(uintptr_t)arg;
    uint64_t rng = 0x1000 + id;
    struct block *local[LOCAL] = {0};
    struct totals t = {0};
    int bad = 0;

    for (unsigned i = 0; i < ITERS; i++) {
        size_t size = pick_size(&rng);
        uint64_t seed = ((uint64_t)id << 32) | i;
        struct block *b = make(seed, size);
        if (!b) {
            bad++;
            continue;
        }
        t.allocs++;
        t.bytes += size;
        uint64_t r = tu_next(&rng);
        if (r % 3 == 0) {
            push(b);
            t.handed_off++;
        } else {
            unsigned slot = (unsigned)(r >> 8) % LOCAL;
            if (local[slot]) {
                t.checksum += consume(local[slot], 0, &bad);
                t.frees++;
            }
            local[slot] = b;
        }
        /* Take someone's block (maybe our own) now and then. */
        if (r % 4 == 1) {
            struct block *o = pop();
            if (o) {
                t.checksum += consume(o, (r >> 16) % 2 == 0, &bad);
                t.frees++;
            }
        }
    }
    for (unsigned s = 0; s < LOCAL; s++)
        if (local[s]) {
            t.checksum += consume(local[s], 0, &bad);
            t.frees++;
        }

    pthread_mutex_lock(&tlock);
    all.allocs += t.allocs;
    all.frees += t.frees;
    all.bytes += t.bytes;
    all.handed_off += t.handed_off;
    all.checksum += t.checksum;
    failures_seen += bad;
    pthread_mutex_unlock(&tlock);
    if (id == NTHREADS - 1)
        pthread_exit((void *)(uintptr_t)(1000 + id));
    return (void *)(uintptr_t)(1000 + id);
}

static int idle_pipe[2];

static void *idle(void *arg)
{
    (void)arg;
    char *scratch = malloc(4096);
    memset(scratch, 1, 4096);
    char c;
    /* Blocks until the process exits: nobody ever writes to the pipe. */
    while (read(idle_pipe[0], &c, 1) < 0)
        ;
    free(scratch);
    return NULL;
}

static void *on_own_stack(void *arg)
{
    uint64_t *sum = arg;
    char local[16384];
    tu_fill(local, sizeof local, 77);
    *sum = tu_fnv(TU_FNV_INIT, local, sizeof local);
    void *p = malloc(100000);
    tu_fill(p, 100000, 78);
    *sum ^= tu_verify(p, 100000, 78);
    free(p);
    return NULL;
}

int main(void)
{
    pthread_t th[NTHREADS];
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    for (unsigned i = 0; i < NTHREADS; i++) {
        /* Half the workers get a non-default stack size. */
        pthread_attr_setstacksize(&attr, i % 2 ? 256 * 1024 : 8 * 1024 * 1024);
        if (pthread_create(&th[i], &attr, worker, (void *)(uintptr_t)i) != 0)
            DIE("pthread_create %u", i);
    }
    pthread_attr_destroy(&attr);
    uint64_t ret_sum = 0;
    for (unsigned i = 0; i < NTHREADS; i++) {
        void *ret;
        pthread_join(th[i], &ret);
        ret_sum += (uintptr_t)ret;
    }
    /* Whatever is still queued is freed here, by the main thread. */
    int bad = 0;
    size_t drained = 0;
    for (struct block *b; (b = pop()) != NULL; drained++) {
        all.checksum += consume(b, 0, &bad);
        all.frees++;
    }
    failures_seen += bad;
    printf("threads_alloc: %d threads x %d iterations\n", NTHREADS, ITERS);
    printf("allocs %llu frees %llu bytes %llu handed off %llu\n", (unsigned long long)all.allocs,
           (unsigned long long)all.frees, (unsigned long long)all.bytes, (unsigned long long)all.handed_off);
    printf("checksum %016llx, join values sum %llu, queue empty %s\n", (unsigned long long)all.checksum,
           (unsigned long long)ret_sum, qlen == 0 ? "yes" : "no");
    CHECK(all.allocs == all.frees, "allocs %llu != frees %llu", (unsigned long long)all.allocs,
          (unsigned long long)all.frees);
    CHECK(failures_seen == 0, "%d blocks were corrupt", failures_seen);

    /* A thread running on a stack the program allocated with malloc. */
    size_t stack_size = 1024 * 1024;
    void *stack = NULL;
    if (posix_memalign(&stack, 4096, stack_size) != 0)
        DIE("stack allocation");
    pthread_attr_init(&attr);
    pthread_attr_setstack(&attr, stack, stack_size);
    uint64_t own = 0;
    pthread_t t;
    if (pthread_create(&t, &attr, on_own_stack, &own) != 0)
        DIE("pthread_create on own stack");
    pthread_join(t, NULL);
    pthread_attr_destroy(&attr);
    free(stack);
    printf("thread on a malloc'd stack: checksum %016llx\n", (unsigned long long)own);

    /* Two threads that are still blocked when the process exits. */
    if (pipe(idle_pipe) != 0)
        DIE("pipe");
    for (int i = 0; i < 2; i++) {
        pthread_t it;
        if (pthread_create(&it, NULL, idle, NULL) != 0)
            DIE("pthread_create idle");
    }
    return tu_finish("threads_alloc", 0);
}
