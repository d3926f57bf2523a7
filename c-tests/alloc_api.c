/* alloc_api: every allocation entry point the shim interposes, with the results
 * glibc gives (errno names, alignment and size checks, never addresses). */
#define _GNU_SOURCE
#include <malloc.h>
#include <stdint.h>
#include <unistd.h>

#include "testutil.h"

static int aligned(const void *p, size_t a) { return ((uintptr_t)p % a) == 0; }

/* Sizes behind volatile so the compiler cannot see (and warn about) the overflows. */
static volatile size_t v_huge = SIZE_MAX - 4096;
static volatile size_t v_half = (SIZE_MAX / 2) + 2;
static volatile size_t v_zero = 0;

/* Called through volatile pointers where a call is expected to fail and the old block is
 * used afterwards: GCC's -Wuse-after-free cannot know that a failed realloc keeps it. */
static void *(*volatile realloc_fn)(void *, size_t) = realloc;
static void *(*volatile reallocarray_fn)(void *, size_t, size_t) = reallocarray;

static void test_malloc(void)
{
    static const size_t sizes[] = {1, 7, 16, 24, 100, 1000, 4096, 65536, 131072, 1 << 20, 4 << 20};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        size_t n = sizes[i];
        unsigned char *p = malloc(n);
        if (!p) {
            FAIL("malloc(%zu) returned NULL", n);
            continue;
        }
        tu_fill(p, n, n);
        size_t bad = tu_verify(p, n, n);
        size_t usable = malloc_usable_size(p);
        printf("malloc(%zu): %s, usable>=n %s, aligned16 %s\n", n, bad == n ? "pattern ok" : "CORRUPT",
               usable >= n ? "yes" : "no", aligned(p, 16) ? "yes" : "no");
        CHECK(bad == n, "malloc(%zu) pattern broken at %zu", n, bad);
        CHECK(usable >= n, "malloc_usable_size %zu < %zu", usable, n);
        free(p);
    }
    void *z = malloc(v_zero);
    printf("malloc(0): %s\n", z ? "non-null" : "NULL");
    free(z);

    errno = 0;
    void *h = malloc(v_huge);
    printf("malloc(SIZE_MAX-4096): %s errno=%s\n", h ? "non-null" : "NULL", tu_errno_name(errno));
    CHECK(h == NULL && errno == ENOMEM, "huge malloc should fail with ENOMEM");
    free(h);

    free(NULL);
    printf("free(NULL): ok\n");
}

static void test_calloc(void)
{
    static const size_t counts[] = {1, 10, 1000, 100000};
    for (size_t i = 0; i < sizeof counts / sizeof counts[0]; i++) {
        size_t n = counts[i];
        int *p = calloc(n, sizeof(int));
        if (!p) {
            FAIL("calloc(%zu) NULL", n);
            continue;
        }
        size_t nonzero = 0;
        for (size_t j = 0; j < n; j++)
            nonzero += p[j] != 0;
        printf("calloc(%zu, %zu): nonzero=%zu\n", n, sizeof(int), nonzero);
        CHECK(nonzero == 0, "calloc memory not zeroed");
        for (size_t j = 0; j < n; j++)
            p[j] = (int)j;
        free(p);
    }
    /* Memory reused from a freed dirty block must still come back zeroed. */
    for (int round = 0; round < 4; round++) {
        unsigned char *d = malloc(5000);
        memset(d, 0xa5, 5000);
        free(d);
        unsigned char *c = calloc(1, 5000);
        size_t nz = 0;
        for (size_t j = 0; j < 5000; j++)
            nz += c[j] != 0;
        CHECK(nz == 0, "calloc after free of dirty block: %zu nonzero bytes", nz);
        free(c);
    }
    printf("calloc reuse of dirty memory: zeroed\n");

    errno = 0;
    void *o = calloc(v_half, 2);
    printf("calloc(SIZE_MAX/2+2, 2): %s errno=%s\n", o ? "non-null" : "NULL", tu_errno_name(errno));
    CHECK(o == NULL && errno == ENOMEM, "calloc overflow should fail with ENOMEM");
    free(o);

    void *z = calloc(v_zero, 8);
    printf("calloc(0, 8): %s\n", z ? "non-null" : "NULL");
    free(z);
}

static void test_realloc(void)
{
    errno = 0;
    unsigned char *p = realloc(NULL, 100);
    printf("realloc(NULL, 100): %s\n", p ? "non-null" : "NULL");
    if (!p)
        DIE("realloc(NULL, 100) failed");
    tu_fill(p, 100, 1);

    static const size_t grow[] = {200, 4000, 100000, 300000, 3 << 20};
    size_t have = 100;
    for (size_t i = 0; i < sizeof grow / sizeof grow[0]; i++) {
        unsigned char *q = realloc(p, grow[i]);
        if (!q)
            DIE("realloc grow to %zu failed", grow[i]);
        p = q;
        size_t bad = tu_verify(p, have, 1);
        printf("realloc grow %zu -> %zu: prefix %s\n", have, grow[i], bad == have ? "kept" : "LOST");
        CHECK(bad == have, "prefix lost at %zu", bad);
        /* Refill the whole block so the next step checks everything. */
        tu_fill(p, grow[i], 1);
        have = grow[i];
    }
    static const size_t shrink[] = {200000, 50000, 1000, 10};
    for (size_t i = 0; i < sizeof shrink / sizeof shrink[0]; i++) {
        unsigned char *q = realloc(p, shrink[i]);
        if (!q)
            DIE("realloc shrink to %zu failed", shrink[i]);
        p = q;
        size_t bad = tu_verify(p, shrink[i], 1);
        printf("realloc shrink %zu -> %zu: content %s\n", have, shrink[i], bad == shrink[i] ? "kept" : "LOST");
        CHECK(bad == shrink[i], "content lost at %zu", bad);
        have = shrink[i];
    }
    errno = 0;
    void *h = realloc_fn(p, v_huge);
    printf("realloc(p, SIZE_MAX-4096): %s errno=%s, old block %s\n", h ? "non-null" : "NULL",
           tu_errno_name(errno), tu_verify(p, have, 1) == have ? "intact" : "BROKEN");
    CHECK(h == NULL && errno == ENOMEM, "huge realloc should fail with ENOMEM");

    void *r = realloc_fn(p, v_zero);
    printf("realloc(p, 0): %s\n", r ? "non-null" : "NULL (freed)");
    free(r);
}

static void test_reallocarray(void)
{
    int *p = reallocarray(NULL, 10, sizeof(int));
    if (!p)
        DIE("reallocarray(NULL, 10) failed");
    for (int i = 0; i < 10; i++)
        p[i] = i * i;
    int *q = reallocarray(p, 10000, sizeof(int));
    if (!q)
        DIE("reallocarray grow failed");
    p = q;
    int ok = 1;
    for (int i = 0; i < 10; i++)
        ok &= p[i] == i * i;
    printf("reallocarray grow 10 -> 10000 ints: prefix %s\n", ok ? "kept" : "LOST");
    CHECK(ok, "reallocarray lost content");

    errno = 0;
    void *o = reallocarray_fn(p, v_half, 4);
    printf("reallocarray(p, SIZE_MAX/2+2, 4): %s errno=%s\n", o ? "non-null" : "NULL", tu_errno_name(errno));
    CHECK(o == NULL && errno == ENOMEM, "reallocarray overflow should fail with ENOMEM");
    ok = 1;
    for (int i = 0; i < 10; i++)
        ok &= p[i] == i * i;
    CHECK(ok, "reallocarray overflow damaged the old block");
    free(p);
}

static void test_posix_memalign(void)
{
    static const size_t good[] = {sizeof(void *), 16, 32, 64, 256, 4096, 65536, 1 << 20};
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        void *p = NULL;
        int rc = posix_memalign(&p, good[i], 1000);
        printf("posix_memalign(align=%zu, 1000): rc=%s aligned=%s usable>=n %s\n", good[i], tu_errno_name(rc),
               p && aligned(p, good[i]) ? "yes" : "no", p && malloc_usable_size(p) >= 1000 ? "yes" : "no");
        CHECK(rc == 0 && p && aligned(p, good[i]), "posix_memalign(%zu) failed", good[i]);
        if (p) {
            tu_fill(p, 1000, good[i]);
            CHECK(tu_verify(p, 1000, good[i]) == 1000, "posix_memalign block pattern");
        }
        free(p);
    }
    /* Bad alignments: not a power of two, or not a multiple of sizeof(void *). */
    static const size_t bad[] = {0, 4, 24, 48, 100, 4097};
    static int sentinel;
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        void *p = &sentinel;
        errno = 0;
        int rc = posix_memalign(&p, bad[i], 64);
        printf("posix_memalign(align=%zu, 64): rc=%s pointer %s errno-unchanged=%s\n", bad[i], tu_errno_name(rc),
               p == &sentinel ? "untouched" : "CHANGED", errno == 0 ? "yes" : "no");
        CHECK(rc == EINVAL && p == &sentinel, "bad posix_memalign alignment %zu", bad[i]);
    }
    void *p = &sentinel;
    int rc = posix_memalign(&p, 64, v_huge);
    printf("posix_memalign(64, SIZE_MAX-4096): rc=%s pointer %s\n", tu_errno_name(rc),
           p == &sentinel ? "untouched" : "CHANGED");
    CHECK(rc == ENOMEM, "huge posix_memalign");
}

static void test_aligned(void)
{
    long page = sysconf(_SC_PAGESIZE);
    static const size_t al[] = {16, 64, 512, 4096, 65536};
    for (size_t i = 0; i < sizeof al / sizeof al[0]; i++) {
        size_t n = al[i] * 3;
        void *a = aligned_alloc(al[i], n);
        void *m = memalign(al[i], 1000);
        printf("aligned_alloc(%zu, %zu): %s; memalign(%zu, 1000): %s\n", al[i], n,
               a && aligned(a, al[i]) && malloc_usable_size(a) >= n ? "aligned" : "BAD", al[i],
               m && aligned(m, al[i]) && malloc_usable_size(m) >= 1000 ? "aligned" : "BAD");
        CHECK(a && aligned(a, al[i]), "aligned_alloc(%zu)", al[i]);
        CHECK(m && aligned(m, al[i]), "memalign(%zu)", al[i]);
        if (a)
            memset(a, 0x5a, n);
        if (m)
            memset(m, 0x3c, 1000);
        free(a);
        free(m);
    }
    static const size_t vs[] = {1, 100, 4096, 10000, 1 << 20};
    for (size_t i = 0; i < sizeof vs / sizeof vs[0]; i++) {
        void *v = valloc(vs[i]);
        void *pv = pvalloc(vs[i]);
        size_t rounded = (vs[i] + (size_t)page - 1) / (size_t)page * (size_t)page;
        printf("valloc(%zu): %s; pvalloc(%zu): %s\n", vs[i],
               v && aligned(v, (size_t)page) && malloc_usable_size(v) >= vs[i] ? "page-aligned" : "BAD", vs[i],
               pv && aligned(pv, (size_t)page) && malloc_usable_size(pv) >= rounded ? "page-aligned, page-rounded"
                                                                                    : "BAD");
        CHECK(v && aligned(v, (size_t)page), "valloc(%zu)", vs[i]);
        CHECK(pv && aligned(pv, (size_t)page) && malloc_usable_size(pv) >= rounded, "pvalloc(%zu)", vs[i]);
        if (v)
            memset(v, 1, vs[i]);
        if (pv)
            memset(pv, 2, rounded);
        free(v);
        free(pv);
    }
    printf("malloc_usable_size(NULL): %zu\n", malloc_usable_size(NULL));
}

/* Blocks allocated inside libc (through the interposable malloc) and freed here. */
static void test_libc_internal(void)
{
    char *s = strdup("memshadow strdup");
    char *sn = strndup("memshadow strndup and more", 17);
    char *a = NULL;
    int n = asprintf(&a, "asprintf %d %s", 42, "x");
    printf("strdup: %s; strndup: %s; asprintf: %s (%d)\n", s, sn, a, n);
    free(s);
    free(sn);
    free(a);

    char *buf = NULL;
    size_t len = 0;
    FILE *ms = open_memstream(&buf, &len);
    for (int i = 0; i < 2000; i++)
        fprintf(ms, "line %d\n", i);
    fclose(ms);
    printf("open_memstream: %zu bytes, checksum %016llx\n", len, (unsigned long long)tu_fnv(TU_FNV_INIT, buf, len));
    free(buf);

    char *line = NULL;
    size_t cap = 0;
    FILE *f = fmemopen("first line\nsecond line is longer than the first\n", 48, "r");
    int lines = 0;
    while (getline(&line, &cap, f) > 0)
        lines++;
    fclose(f);
    free(line);
    printf("getline: %d lines\n", lines);
}

int main(void)
{
    test_malloc();
    test_calloc();
    test_realloc();
    test_reallocarray();
    test_posix_memalign();
    test_aligned();
    test_libc_internal();
    return tu_finish("alloc_api", 0);
}
