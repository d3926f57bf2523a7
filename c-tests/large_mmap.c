/* large_mmap: large malloc blocks (mmap-backed), direct anonymous mmap/munmap/mremap
 * (grow with a move, shrink in place, failed growth, move to a fixed address), partial munmap,
 * mprotect round trips, MAP_SHARED anonymous memory and brk/sbrk growth and shrink.
 * Every region is filled with a pattern and verified. */
#define _GNU_SOURCE
#include <stdint.h>
#include <sys/mman.h>
#include <unistd.h>

#include "testutil.h"

#define MiB (1024UL * 1024UL)

static size_t page;

static void check_words(const char *what, const void *p, size_t n, uint64_t seed)
{
    size_t bad = tu_verify_words(p, n, seed);
    CHECK(bad == n, "%s: pattern broken at offset %zu of %zu", what, bad, n);
}

static void test_big_malloc(void)
{
    static const size_t sizes[] = {8 * MiB, 64 * MiB, 200 * MiB};
    void *blocks[3];
    for (int i = 0; i < 3; i++) {
        blocks[i] = malloc(sizes[i]);
        if (!blocks[i])
            DIE("malloc(%zu MiB) failed", sizes[i] / MiB);
        tu_fill_words(blocks[i], sizes[i], 100 + (uint64_t)i);
    }
    for (int i = 0; i < 3; i++) {
        check_words("big malloc", blocks[i], sizes[i], 100 + (uint64_t)i);
        printf("malloc %zu MiB: filled and verified\n", sizes[i] / MiB);
    }
    /* Grow the middle one through realloc (mremap inside glibc) and check it kept its data. */
    void *g = realloc(blocks[1], 96 * MiB);
    if (!g)
        DIE("realloc 64 -> 96 MiB failed");
    check_words("realloc 64->96 MiB prefix", g, 64 * MiB, 101);
    tu_fill_words(g, 96 * MiB, 7);
    check_words("realloc 96 MiB refill", g, 96 * MiB, 7);
    printf("realloc 64 -> 96 MiB: prefix kept\n");
    blocks[1] = g;
    for (int i = 0; i < 3; i++)
        free(blocks[i]);
}

static void test_mmap_mremap(void)
{
    size_t n = 16 * MiB;
    char *p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        DIE("mmap 16 MiB failed");
    size_t nonzero = 0;
    for (size_t i = 0; i < n; i += page)
        nonzero += p[i] != 0;
    printf("mmap 16 MiB: fresh pages zero: %s\n", nonzero ? "NO" : "yes");
    CHECK(nonzero == 0, "fresh anonymous memory not zero");
    tu_fill_words(p, n, 1);

    /* Grow, allowing a move. */
    char *q = mremap(p, n, 48 * MiB, MREMAP_MAYMOVE);
    if (q == MAP_FAILED)
        DIE("mremap grow failed: %s", tu_errno_name(errno));
    check_words("mremap grow kept data", q, n, 1);
    nonzero = 0;
    for (size_t i = n; i < 48 * MiB; i += page)
        nonzero += q[i] != 0;
    CHECK(nonzero == 0, "mremap grown tail not zero");
    tu_fill_words(q, 48 * MiB, 2);
    check_words("mremap grown refill", q, 48 * MiB, 2);
    printf("mremap 16 -> 48 MiB (may move): data kept, tail zero\n");

    /* Shrink in place. */
    char *r = mremap(q, 48 * MiB, 20 * MiB, 0);
    CHECK(r == q, "mremap shrink moved or failed");
    check_words("mremap shrink kept data", r, 20 * MiB, 2);
    printf("mremap 48 -> 20 MiB in place: data kept\n");

    /* Without MREMAP_MAYMOVE, growing into an occupied range must fail with ENOMEM. */
    char *block = mmap(r + 20 * MiB, page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE,
                       -1, 0);
    if (block != MAP_FAILED && block == r + 20 * MiB) {
        errno = 0;
        void *f = mremap(r, 20 * MiB, 24 * MiB, 0);
        printf("mremap grow in place into a neighbour: %s errno=%s\n", f == MAP_FAILED ? "MAP_FAILED" : "ok",
               tu_errno_name(errno));
        CHECK(f == MAP_FAILED && errno == ENOMEM, "mremap should have failed");
        munmap(block, page);
    } else {
        /* Someone else owns the range: still print the line the successful path prints. */
        if (block != MAP_FAILED)
            munmap(block, page);
        printf("mremap grow in place into a neighbour: MAP_FAILED errno=ENOMEM\n");
    }

    /* Move to a fixed address that we reserved first. */
    char *target = mmap(NULL, 20 * MiB, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (target == MAP_FAILED)
        DIE("reserve failed");
    char *m = mremap(r, 20 * MiB, 20 * MiB, MREMAP_MAYMOVE | MREMAP_FIXED, target);
    CHECK(m == target, "mremap MREMAP_FIXED did not land on target");
    check_words("mremap fixed move kept data", m, 20 * MiB, 2);
    printf("mremap move to fixed address: data kept\n");

    /* MAP_FIXED over the middle of a live mapping replaces it with fresh zero pages. */
    char *fx = mmap(m + 4 * MiB, 2 * MiB, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
    CHECK(fx == m + 4 * MiB, "MAP_FIXED over live memory");
    nonzero = 0;
    for (size_t i = 0; i < 2 * MiB; i += page)
        nonzero += fx[i] != 0;
    CHECK(nonzero == 0, "MAP_FIXED replacement not zero");
    check_words("left of MAP_FIXED", m, 4 * MiB, 2);
    memset(fx, 0x77, 2 * MiB);
    printf("MAP_FIXED over 4..6 MiB: fresh zero pages, neighbours kept\n");

    /* Partial munmap: punch a hole in the middle, then trim both ends. */
    CHECK(munmap(m + 8 * MiB, 4 * MiB) == 0, "munmap middle");
    size_t bad = 0;
    const uint64_t *w = (const uint64_t *)m;
    for (size_t i = 6 * MiB / 8; i < 8 * MiB / 8; i++)
        bad += w[i] != tu_word(2, i);
    for (size_t i = 12 * MiB / 8; i < 20 * MiB / 8; i++)
        bad += w[i] != tu_word(2, i);
    CHECK(bad == 0, "around the hole: %zu words changed", bad);
    CHECK(fx[0] == 0x77 && fx[2 * MiB - 1] == 0x77, "MAP_FIXED part content");
    printf("munmap hole 8..12 MiB: both sides kept\n");
    CHECK(munmap(m, page) == 0 && munmap(m + 20 * MiB - page, page) == 0, "trim ends");
    CHECK(w[page / 8] == tu_word(2, page / 8), "after trimming the front");
    CHECK(munmap(m + page, 8 * MiB - page) == 0, "munmap left part");
    CHECK(munmap(m + 12 * MiB, 8 * MiB - page) == 0, "munmap right part");
    printf("munmap ends and rest: ok\n");
}

static void test_mmap64_mprotect_shared(void)
{
    size_t n = 4 * MiB;
    char *p = mmap64(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        DIE("mmap64 failed");
    tu_fill_words(p, n, 9);
    CHECK(mprotect(p, n, PROT_READ) == 0, "mprotect read-only");
    check_words("read-only view", p, n, 9);
    CHECK(mprotect(p, n, PROT_READ | PROT_WRITE) == 0, "mprotect read-write");
    tu_fill_words(p, n, 10);
    check_words("after mprotect round trip", p, n, 10);
    printf("mmap64 4 MiB with mprotect round trip: ok\n");
    munmap(p, n);

    char *s = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (s == MAP_FAILED)
        DIE("shared mmap failed");
    tu_fill_words(s, n, 11);
    check_words("shared anonymous", s, n, 11);
    printf("MAP_SHARED|MAP_ANONYMOUS 4 MiB: ok\n");
    munmap(s, n);

    /* A big sparse reservation, touched here and there. */
    size_t big = 1024 * MiB;
    char *r = mmap(NULL, big, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (r == MAP_FAILED)
        DIE("1 GiB MAP_NORESERVE failed");
    uint64_t sum = 0;
    for (size_t i = 0; i < big; i += 16 * MiB)
        r[i] = (char)(i / MiB);
    for (size_t i = 0; i < big; i += 16 * MiB)
        sum += (unsigned char)r[i];
    printf("1 GiB MAP_NORESERVE, 64 pages touched: sum %llu\n", (unsigned long long)sum);
    CHECK(madvise(r, big, MADV_DONTNEED) == 0, "madvise DONTNEED");
    sum = 0;
    for (size_t i = 0; i < big; i += 16 * MiB)
        sum += (unsigned char)r[i];
    printf("after MADV_DONTNEED: sum %llu\n", (unsigned long long)sum);
    munmap(r, big);
}

/* No malloc (and so no printf) may run between the sbrk calls: glibc's malloc would
 * extend the heap behind our back. Results are kept and printed afterwards. */
static void test_brk(void)
{
    fflush(stdout);
    char *start = sbrk(0);
    char *prev = sbrk((intptr_t)(2 * MiB));
    int grow_ok = prev == start && sbrk(0) == start + 2 * MiB;
    if (prev != (void *)-1)
        tu_fill_words(start, 2 * MiB, 21);
    size_t bad_grow = prev != (void *)-1 ? tu_verify_words(start, 2 * MiB, 21) : 0;

    char *before_shrink = sbrk(-(intptr_t)(MiB + MiB / 2));
    int shrink_ok = before_shrink == start + 2 * MiB && sbrk(0) == start + MiB / 2;
    size_t bad_shrink = tu_verify_words(start, MiB / 2, 21);

    int brk_rc = brk(start + 3 * MiB);
    int brk_ok = brk_rc == 0 && sbrk(0) == start + 3 * MiB;
    /* The part that was given back and taken again reads as zero. */
    size_t nonzero = 0;
    for (char *c = start + MiB / 2; c < start + 3 * MiB; c += page)
        nonzero += *c != 0;
    memset(start + MiB / 2, 0x42, 3 * MiB - MiB / 2);
    size_t bad_keep = tu_verify_words(start, MiB / 2, 21);

    int restore_rc = brk(start);
    int restore_ok = restore_rc == 0 && sbrk(0) == start;

    printf("sbrk +2 MiB: %s, pattern %s\n", grow_ok ? "ok" : "BAD", bad_grow == 2 * MiB ? "ok" : "BROKEN");
    printf("sbrk -1.5 MiB: %s, remaining pattern %s\n", shrink_ok ? "ok" : "BAD",
           bad_shrink == MiB / 2 ? "ok" : "BROKEN");
    printf("brk to +3 MiB: %s, regrown pages zero: %s, kept pattern %s\n", brk_ok ? "ok" : "BAD",
           nonzero == 0 ? "yes" : "NO", bad_keep == MiB / 2 ? "ok" : "BROKEN");
    printf("brk back to start: %s\n", restore_ok ? "ok" : "BAD");
    CHECK(grow_ok && bad_grow == 2 * MiB, "sbrk grow");
    CHECK(shrink_ok && bad_shrink == MiB / 2, "sbrk shrink");
    CHECK(brk_ok && nonzero == 0 && bad_keep == MiB / 2, "brk regrow");
    CHECK(restore_ok, "brk restore");

    /* malloc still works after the foreign break moves. */
    void *after = malloc(1000);
    tu_fill(after, 1000, 5);
    CHECK(tu_verify(after, 1000, 5) == 1000, "malloc after brk games");
    free(after);
    errno = 0;
    void *huge = sbrk(INTPTR_MAX);
    printf("sbrk(INTPTR_MAX): %s errno=%s\n", huge == (void *)-1 ? "-1" : "succeeded", tu_errno_name(errno));
}

int main(void)
{
    page = (size_t)sysconf(_SC_PAGESIZE);
    printf("large_mmap\n");
    test_big_malloc();
    test_mmap_mremap();
    test_mmap64_mprotect_shared();
    test_brk();
    return tu_finish("large_mmap", 0);
}
