/* big_heap: 1 GiB live at the peak, in 1 MiB blocks (mmap-backed) and in small blocks
 * (brk heap), every byte written, all of it verified while everything is live, then
 * freed in an interleaved order; the checksum printed covers every block.
 * `big_heap fill`: only the first part (every page written once, then read), ending
 * with everything live: a program that touches memory for the first time, never
 * rewriting it. */
#define _GNU_SOURCE
#include <stdint.h>

#include "testutil.h"

#define MiB (1024UL * 1024UL)
#define BIG_BLOCKS 896            /* 896 MiB in 1 MiB blocks */
#define SMALL_BYTES (128 * MiB)   /* 128 MiB in small blocks */

struct small {
    uint64_t *p;
    size_t len; /* bytes, a multiple of 8 */
};

int main(int argc, char **argv)
{
    int fill_only = argc > 1 && strcmp(argv[1], "fill") == 0;
    if (argc > 1 && !fill_only)
        DIE("usage: big_heap [fill]");
    uint64_t **big = malloc(BIG_BLOCKS * sizeof *big);
    size_t max_small = SMALL_BYTES / 32;
    struct small *sm = malloc(max_small * sizeof *sm);
    if (!big || !sm)
        DIE("index arrays");
    uint64_t rng = 4242;
    uint64_t sum = 0;
    size_t live = 0, nsmall = 0, small_bytes = 0;

    /* Interleave big and small allocations, so the heaps grow together. */
    for (size_t b = 0; b < BIG_BLOCKS; b++) {
        big[b] = malloc(MiB);
        if (!big[b])
            DIE("malloc 1 MiB #%zu", b);
        tu_fill_words(big[b], MiB, b);
        live += MiB;
        size_t target = SMALL_BYTES * (b + 1) / BIG_BLOCKS;
        while (small_bytes < target && nsmall < max_small) {
            size_t len = 8 * (4 + tu_next(&rng) % 508); /* 32 .. 4 KiB */
            uint64_t *p = malloc(len);
            if (!p)
                DIE("small malloc");
            tu_fill_words(p, len, 1000000 + nsmall);
            sm[nsmall].p = p;
            sm[nsmall].len = len;
            nsmall++;
            small_bytes += len;
            live += len;
        }
    }
    printf("big_heap: peak live %zu MiB (%d x 1 MiB + %zu small blocks, %zu bytes)\n", live / MiB, BIG_BLOCKS,
           nsmall, small_bytes);
    CHECK(live >= 1024 * MiB, "peak below 1 GiB");

    /* Verify everything while it is all live. */
    for (size_t b = 0; b < BIG_BLOCKS; b++) {
        size_t bad = tu_verify_words(big[b], MiB, b);
        CHECK(bad == MiB, "big block %zu corrupt at %zu", b, bad);
        sum += big[b][b % (MiB / 8)];
    }
    for (size_t i = 0; i < nsmall; i++) {
        size_t bad = tu_verify_words(sm[i].p, sm[i].len, 1000000 + i);
        CHECK(bad == sm[i].len, "small block %zu corrupt at %zu", i, bad);
        sum += sm[i].p[sm[i].len / 16];
    }
    printf("verified all blocks, checksum %016llx\n", (unsigned long long)sum);
    if (fill_only)
        return tu_finish("big_heap", 0);

    /* Free every other block, reallocate some of the small ones, verify the rest. */
    for (size_t b = 0; b < BIG_BLOCKS; b += 2)
        free(big[b]);
    for (size_t i = 0; i < nsmall; i += 2) {
        free(sm[i].p);
        sm[i].p = NULL;
    }
    uint64_t sum2 = 0;
    for (size_t i = 1; i < nsmall; i += 4) {
        uint64_t *g = realloc(sm[i].p, sm[i].len * 3);
        if (!g)
            DIE("realloc");
        sm[i].p = g;
        CHECK(tu_verify_words(g, sm[i].len, 1000000 + i) == sm[i].len, "realloc'd small block %zu", i);
    }
    for (size_t b = 1; b < BIG_BLOCKS; b += 2) {
        CHECK(tu_verify_words(big[b], MiB, b) == MiB, "big block %zu after frees", b);
        sum2 += big[b][7];
        free(big[b]);
    }
    for (size_t i = 1; i < nsmall; i += 2) {
        CHECK(tu_verify_words(sm[i].p, sm[i].len, 1000000 + i) == sm[i].len, "small block %zu after frees", i);
        sum2 += sm[i].p[0];
        free(sm[i].p);
    }
    free(sm);
    free(big);
    printf("second pass checksum %016llx\n", (unsigned long long)sum2);
    return tu_finish("big_heap", 0);
}
