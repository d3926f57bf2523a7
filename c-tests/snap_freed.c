/* Freed memory keeps its past: memory written, snapshotted with memshadow_snapshot(), and
 * then given back to the system must still read as it was at that snapshot.
 *
 * Cases (each fills a buffer with a known pattern, takes snapshot V, records the
 * buffer's checksum at V, then discards or moves the memory and writes elsewhere):
 *   realloc_mmapped  a 256 KiB block (mmapped by glibc) realloc'd to 8 MiB (glibc's own
 *                    __mremap may move it), the new block then rewritten;
 *   realloc_small    a 3000-byte heap block realloc'd to 200 KiB, which moves it; the
 *                    old place is reused by later allocations;
 *   large_free       a 2 MiB block freed (glibc's own __munmap), then a new mapping of
 *                    the same size written with another pattern (often at the same
 *                    address);
 *   sparse_free      a 32 MiB block of which one page in 16 was written, freed: the
 *                    pages never written read as zero at the snapshot (they are
 *                    recorded, not copied);
 *   fresh_fill       an 8 MiB mapping of which one page in 512 was written,
 *                    snapshotted, then written whole (each trap there finds the pages
 *                    after it never written: recorded as zero, not copied), snapshotted
 *                    again (fresh_fill_after) and half rewritten;
 *   trimmed          8 MiB of 64 KiB heap blocks freed, then malloc_trim(0) (glibc's
 *                    own __madvise gives the pages back);
 *   unmapped         an anonymous mapping munmap'ed, then mapped again at the same
 *                    address (MAP_FIXED_NOREPLACE) and rewritten;
 *   madvised         an anonymous mapping partly madvise(MADV_DONTNEED)'d and partly
 *                    rewritten; a second snapshot records its new state too
 *                    (madvised_after);
 *   remapped         an anonymous mapping moved by mremap(MREMAP_MAYMOVE) to a larger
 *                    size, then written at its new address (remapped_after, at a later
 *                    snapshot, covers the new address);
 *   forked           a buffer snapshotted, then a child is forked that rewrites the
 *                    buffer, takes a snapshot of its own (its own version history)
 *                    and checks its memory; the parent rewrites the buffer as well.
 *
 * Output: one line per record, then "ready", then waits for SIGUSR1 and exits 0:
 *     V NAME 0xADDR LEN CHECKSUM        (CHECKSUM: FNV-1a 64, 16 hex digits)
 * Without the shim memshadow_snapshot() fails: prints "snapshot failed" and exits 1. */
#define _GNU_SOURCE
#include <malloc.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "memshadow.h"
#include "testutil.h"

#ifndef MAP_FIXED_NOREPLACE
#define MAP_FIXED_NOREPLACE 0x100000
#endif

#define KiB 1024UL
#define MiB (1024UL * 1024UL)

static long long snap(void)
{
    long long v = memshadow_snapshot();
    if (v < 0) {
        printf("snapshot failed\n");
        exit(1);
    }
    return v;
}

static void record(long long v, const char *name, const void *p, size_t len)
{
    printf("%lld %s %#lx %zu %016llx\n", v, name, (unsigned long)p, len,
           (unsigned long long)tu_fnv(TU_FNV_INIT, p, len));
}

static void *map_anon(size_t len)
{
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        DIE("mmap %zu", len);
    return p;
}

static void realloc_mmapped(void)
{
    size_t len = 256 * KiB;
    unsigned char *p = malloc(len);
    if (!p)
        DIE("malloc");
    tu_fill(p, len, 101);
    long long v = snap();
    record(v, "realloc_mmapped", p, len);
    unsigned char *q = realloc(p, 8 * MiB);
    if (!q)
        DIE("realloc");
    CHECK(tu_verify(q, len, 101) == len, "realloc kept the contents");
    tu_fill(q, 8 * MiB, 102);
    free(q);
}

static void realloc_small(void)
{
    size_t len = 3000;
    unsigned char *p = malloc(len);
    void *fence = malloc(64); /* keeps p from growing in place */
    if (!p || !fence)
        DIE("malloc");
    tu_fill(p, len, 201);
    long long v = snap();
    record(v, "realloc_small", p, len);
    unsigned char *q = realloc(p, 200 * KiB);
    if (!q)
        DIE("realloc");
    CHECK(q != p, "a 200 KiB realloc of a fenced 3000-byte block moves it");
    CHECK(tu_verify(q, len, 201) == len, "realloc kept the contents");
    /* Reuse the old place. */
    for (int i = 0; i < 8; i++) {
        unsigned char *r = malloc(len / 8);
        if (r)
            memset(r, 0xa0 + i, len / 8);
    }
    free(q);
}

static void large_free(void)
{
    size_t len = 2 * MiB;
    unsigned char *p = malloc(len);
    if (!p)
        DIE("malloc");
    tu_fill(p, len, 301);
    long long v = snap();
    record(v, "large_free", p, len);
    free(p);
    unsigned char *again = map_anon(len + 64 * KiB);
    tu_fill(again, len + 64 * KiB, 302);
}

static void record_sparse(long long v, const char *name, unsigned char *p, size_t len,
                          size_t stride);

static void sparse_free(void)
{
    size_t len = 32 * MiB;
    unsigned char *p = malloc(len);
    if (!p)
        DIE("malloc");
    for (size_t off = 0; off < len; off += 16 * 4096)
        tu_fill(p + off, 4096, 350 + (unsigned)(off >> 16));
    long long v = snap();
    record_sparse(v, "sparse_free", p, len, 16 * 4096);
    free(p);
}

/* The checksum of `len` bytes at `p` where only the pages at multiples of `stride`
 * bytes were written: the others are zeros, summed without reading them (a read would
 * map them). */
static void record_sparse(long long v, const char *name, unsigned char *p, size_t len,
                          size_t stride)
{
    static const unsigned char zeros[4096];
    uint64_t h = TU_FNV_INIT;
    for (size_t off = 0; off < len; off += 4096)
        h = tu_fnv(h, off % stride == 0 ? p + off : zeros, 4096);
    printf("%lld %s %#lx %zu %016llx\n", v, name, (unsigned long)p, len,
           (unsigned long long)h);
}

static void fresh_fill(void)
{
    size_t len = 8 * MiB, stride = 512 * 4096;
    unsigned char *p = map_anon(len);
    for (size_t off = 0; off < len; off += stride)
        tu_fill(p + off, 4096, 360 + off / stride);
    long long v = snap();
    record_sparse(v, "fresh_fill", p, len, stride);
    tu_fill(p, len, 370);
    long long v2 = snap();
    record(v2, "fresh_fill_after", p, len);
    tu_fill(p, len / 2, 371);
}

static void trimmed(void)
{
    /* 64 KiB blocks: freeing one writes only its first page (the chunk header), so
     * most pages reach the trim still unwritten since the snapshot. */
    enum { N = 128 };
    static unsigned char *blocks[N];
    size_t each = 64 * KiB - 16;
    /* Keep one block live below them so the heap does not shrink to nothing. */
    void *floor = malloc(32);
    for (int i = 0; i < N; i++) {
        blocks[i] = malloc(each);
        if (!blocks[i])
            DIE("malloc");
        tu_fill(blocks[i], each, 400 + i);
    }
    /* The blocks are consecutive in the brk heap: record the whole stretch. */
    unsigned char *lo = blocks[0], *hi = blocks[N - 1] + each;
    CHECK(hi > lo && (size_t)(hi - lo) < 2 * N * 64 * KiB, "blocks are consecutive");
    long long v = snap();
    record(v, "trimmed", lo, (size_t)(hi - lo));
    for (int i = 0; i < N; i++)
        free(blocks[i]);
    malloc_trim(0);
    free(floor);
}

static void unmapped(void)
{
    size_t len = 1 * MiB;
    unsigned char *p = map_anon(len);
    tu_fill(p, len, 501);
    long long v = snap();
    record(v, "unmapped", p, len);
    if (munmap(p, len) != 0)
        DIE("munmap");
    unsigned char *q = mmap(p, len, PROT_READ | PROT_WRITE,
                            MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
    if (q == MAP_FAILED)
        DIE("mmap again");
    tu_fill(q, len, 502);
}

static void madvised(void)
{
    size_t len = 1 * MiB;
    unsigned char *p = map_anon(len);
    tu_fill(p, len, 601);
    long long v = snap();
    record(v, "madvised", p, len);
    if (madvise(p + 256 * KiB, 512 * KiB, MADV_DONTNEED) != 0)
        DIE("madvise");
    tu_fill(p + 512 * KiB, 128 * KiB, 602);
    long long v2 = snap();
    record(v2, "madvised_after", p, len);
    tu_fill(p, len, 603);
}

static void remapped(void)
{
    size_t len = 1 * MiB;
    unsigned char *p = map_anon(len);
    tu_fill(p, len, 701);
    long long v = snap();
    record(v, "remapped", p, len);
    /* Reserve the space behind it so that growing must move it. */
    void *block = mmap(p + len, 64 * KiB, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE,
                       -1, 0);
    unsigned char *q = mremap(p, len, 4 * MiB, MREMAP_MAYMOVE);
    if (q == MAP_FAILED)
        DIE("mremap");
    CHECK(block == MAP_FAILED || q != p, "mremap moved the mapping");
    CHECK(tu_verify(q, len, 701) == len, "mremap kept the contents");
    tu_fill(q, 4 * MiB, 702);
    long long v2 = snap();
    record(v2, "remapped_after", q, 4 * MiB);
    tu_fill(q, 4 * MiB, 703);
}

static void forked(void)
{
    size_t len = 512 * KiB;
    unsigned char *p = map_anon(len);
    tu_fill(p, len, 801);
    long long v = snap();
    record(v, "forked", p, len);
    fflush(stdout);
    pid_t child = fork();
    if (child < 0)
        DIE("fork");
    if (child == 0) {
        /* The child's memory is its own: rewrite it, snapshot it, check it. */
        tu_fill(p, len, 802);
        long long cv = memshadow_snapshot();
        tu_fill(p, len / 2, 803);
        int ok = cv >= 1 && tu_verify(p, len / 2, 803) == len / 2;
        for (size_t i = len / 2; i < len; i++)
            ok = ok && p[i] == tu_byte(802, i);
        _exit(ok ? 0 : 3);
    }
    tu_fill(p, len, 804);
    int status = 0;
    if (waitpid(child, &status, 0) != child)
        DIE("waitpid");
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the forked child's memory is right (status %d)",
          status);
    CHECK(tu_verify(p, len, 804) == len, "the parent's memory is right after the fork");
}

int main(void)
{
    sigset_t usr1;
    sigemptyset(&usr1);
    sigaddset(&usr1, SIGUSR1);
    sigprocmask(SIG_BLOCK, &usr1, NULL);

    realloc_mmapped();
    realloc_small();
    large_free();
    sparse_free();
    fresh_fill();
    trimmed();
    unmapped();
    madvised();
    remapped();
    forked();
    if (tu_failures)
        return 1;
    printf("ready\n");
    fflush(stdout);
    int sig = 0;
    sigwait(&usr1, &sig);
    return 0;
}
