/* realloc_churn: many buffers grown and shrunk by realloc across glibc's size classes
 * (tcache, small bins, large bins, mmap-backed), content checked after every step.
 * Exits with status 3 on success, to prove exit codes pass through. */
#define _GNU_SOURCE
#include <malloc.h>
#include <stdint.h>

#include "testutil.h"

#define NBUF 64
#define STEPS 4000

struct buf {
    unsigned char *p;
    size_t len;
    uint64_t seed;
};

static size_t pick_size(uint64_t *rng)
{
    uint64_t r = tu_next(rng);
    switch (r % 10) {
    case 0: case 1: case 2: case 3: return 1 + (r >> 8) % 512;          /* tcache / fastbins */
    case 4: case 5: case 6: return 512 + (r >> 8) % 16384;              /* small / large bins */
    case 7: case 8: return 16384 + (r >> 8) % (200 * 1024);             /* around the mmap threshold */
    default: return 256 * 1024 + (r >> 8) % (1536 * 1024);              /* mmap-backed */
    }
}

int main(void)
{
    struct buf b[NBUF];
    uint64_t rng = 12345;
    memset(b, 0, sizeof b);
    for (int i = 0; i < NBUF; i++)
        b[i].seed = 1000 + (uint64_t)i;
    uint64_t grows = 0, shrinks = 0, moves_to_null = 0, bytes_checked = 0;
    uint64_t sum = TU_FNV_INIT;

    for (int step = 0; step < STEPS; step++) {
        struct buf *x = &b[tu_next(&rng) % NBUF];
        size_t want = pick_size(&rng);
        if (x->p && tu_next(&rng) % 50 == 0) {
            /* realloc(p, 0) frees in glibc; the program must behave the same under the shim. */
            size_t bad = tu_verify(x->p, x->len, x->seed);
            CHECK(bad == x->len, "step %d: buffer corrupt before free at %zu/%zu", step, bad, x->len);
            void *r = realloc(x->p, 0);
            if (r)
                free(r);
            x->p = NULL;
            x->len = 0;
            moves_to_null++;
            continue;
        }
        unsigned char *q = realloc(x->p, want);
        if (!q)
            DIE("step %d: realloc(%zu) failed", step, want);
        size_t keep = x->len < want ? x->len : want;
        size_t bad = tu_verify(q, keep, x->seed);
        CHECK(bad == keep, "step %d: realloc %zu -> %zu lost content at %zu", step, x->len, want, bad);
        bytes_checked += keep;
        if (want > x->len) {
            grows++;
            /* Extend the pattern over the new tail only: the prefix must survive the next step. */
            for (size_t i = x->len; i < want; i++)
                q[i] = tu_byte(x->seed, i);
        } else {
            shrinks++;
        }
        CHECK(malloc_usable_size(q) >= want, "usable size below request");
        sum = tu_fnv(sum, q + want / 2, want - want / 2 < 64 ? want - want / 2 : 64);
        x->p = q;
        x->len = want;
    }
    for (int i = 0; i < NBUF; i++) {
        if (!b[i].p)
            continue;
        size_t bad = tu_verify(b[i].p, b[i].len, b[i].seed);
        CHECK(bad == b[i].len, "final check of buffer %d at %zu", i, bad);
        bytes_checked += b[i].len;
        free(b[i].p);
    }
    printf("realloc_churn: %d steps, %llu grows, %llu shrinks, %llu realloc(p, 0)\n", STEPS,
           (unsigned long long)grows, (unsigned long long)shrinks, (unsigned long long)moves_to_null);
    printf("bytes checked %llu, checksum %016llx\n", (unsigned long long)bytes_checked, (unsigned long long)sum);
    return tu_finish("realloc_churn", 3);
}
