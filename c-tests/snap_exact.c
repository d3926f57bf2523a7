/* Byte-exact snapshots: writes known patterns into buffers of every kind the shim
 * tracks, takes a snapshot after each round with memshadow_snapshot(), and prints the
 * checksum of each buffer as it was right after each snapshot, for the harness
 * (inspector/tests/snapshots.rs) to compare with what `memshadow read` returns.
 *
 * Buffers: a 64 KiB malloc block (from the brk heap), a 1 MiB malloc block (mapped by
 * glibc behind the shim's back), a 4 MiB anonymous mmap followed by an inaccessible
 * guard page (so untracked memory starts right at its end), a 256 KiB .bss array, and a
 * 192 KiB malloc block allocated only before snapshot 3 (memory that appears between
 * snapshots). In each round a varying subset of the 4 KiB pieces of each buffer is
 * written (partly: a stretch, or one word); every eighth piece is never written (zero
 * pages that were never touched in the mmap and .bss).
 *
 * Output, one line per (snapshot, buffer), then, after one more round of writes that no
 * snapshot covers, the checksums of the live buffers:
 *     V NAME 0xADDR LEN CHECKSUM        (CHECKSUM: FNV-1a 64, 16 hex digits)
 *     live NAME 0xADDR LEN CHECKSUM
 *     ready
 * then waits for SIGUSR1 and exits 0. Nothing writes the buffers after "ready".
 *
 * Without the shim memshadow_snapshot() fails: prints "snapshot failed: ENOSYS" (or the
 * name of the errno it got) and exits 1. */
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "memshadow.h"
#include "testutil.h"

#define ROUNDS 6
#define PIECE 4096
#define MAX_BUFFERS 5

static unsigned char bss_buf[256 << 10] __attribute__((aligned(4096)));

struct buffer {
    const char *name;
    unsigned char *p;
    size_t len;
};

static struct buffer bufs[MAX_BUFFERS];
static int nbufs;

static const char *errno_name(int e)
{
    switch (e) {
    case ENOSYS: return "ENOSYS";
    case ENOMEM: return "ENOMEM";
    case EINVAL: return "EINVAL";
    case EPERM: return "EPERM";
    case EBUSY: return "EBUSY";
    case EAGAIN: return "EAGAIN";
    case EFAULT: return "EFAULT";
    case ENOSPC: return "ENOSPC";
    case EIO: return "EIO";
    case ENOTSUP: return "ENOTSUP";
    default: return "E?";
    }
}

/* Writes round k's pattern into buffer b: for each 4 KiB piece, a stretch of bytes, a
 * single word, or nothing, depending on (piece, buffer, round). */
static void write_round(int b, int k)
{
    struct buffer *buf = &bufs[b];
    size_t pieces = (buf->len + PIECE - 1) / PIECE;
    for (size_t p = 0; p < pieces; p++) {
        if (p % 8 == 7)
            continue; /* never written */
        size_t base = p * PIECE;
        size_t room = buf->len - base < PIECE ? buf->len - base : PIECE;
        uint64_t seed = ((uint64_t)k << 40) ^ ((uint64_t)b << 32) ^ p;
        switch ((p * 7 + (size_t)b * 3 + (size_t)k * 5) % 6) {
        case 0:
        case 1: {
            size_t off = ((p * 131 + (size_t)k * 17) % 64) * 32 % room;
            size_t n = 512 + ((p + (size_t)k) % 7) * 256;
            if (n > room - off)
                n = room - off;
            for (size_t i = 0; i < n; i++)
                buf->p[base + off + i] = tu_byte(seed, i);
            break;
        }
        case 2: {
            size_t off = ((size_t)k * 8 * 37 + p * 8) % room;
            off -= off % 8;
            if (off + 8 <= room) {
                uint64_t w = tu_word(seed, off);
                memcpy(buf->p + base + off, &w, 8);
            }
            break;
        }
        default:
            break; /* untouched this round */
        }
    }
}

static uint64_t checksum(const struct buffer *b)
{
    return tu_fnv(TU_FNV_INIT, b->p, b->len);
}

static void add(const char *name, void *p, size_t len)
{
    if (!p)
        DIE("cannot allocate %s (%zu bytes)", name, len);
    bufs[nbufs++] = (struct buffer){name, p, len};
}

int main(void)
{
    sigset_t usr1;
    sigemptyset(&usr1);
    sigaddset(&usr1, SIGUSR1);
    pthread_sigmask(SIG_BLOCK, &usr1, NULL);

    add("heap", malloc(64 << 10), 64 << 10);
    add("bigheap", malloc(1 << 20), 1 << 20);
    unsigned char *m = mmap(NULL, (4 << 20) + 4096, PROT_READ | PROT_WRITE,
                            MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED || mprotect(m + (4 << 20), 4096, PROT_NONE) != 0)
        DIE("cannot map the 4 MiB buffer and its guard page: %s", errno_name(errno));
    add("mmap", m, 4 << 20);
    add("bss", bss_buf, sizeof bss_buf);

    long long prev = 0;
    for (int k = 1; k <= ROUNDS; k++) {
        if (k == 3)
            add("late", malloc(192 << 10), 192 << 10);
        for (int b = 0; b < nbufs; b++)
            write_round(b, k);
        long long v = memshadow_snapshot();
        if (v < 0) {
            printf("snapshot failed: %s\n", errno_name(errno));
            return 1;
        }
        CHECK(v > prev, "snapshot %d returned version %lld after %lld", k, v, prev);
        prev = v;
        for (int b = 0; b < nbufs; b++)
            printf("%lld %s %p %zu %016llx\n", v, bufs[b].name, (void *)bufs[b].p, bufs[b].len,
                   (unsigned long long)checksum(&bufs[b]));
    }
    /* One more round that no snapshot covers: the live memory now differs from the last
     * version, so reading that version must come from the saved pre-images. */
    for (int b = 0; b < nbufs; b++)
        write_round(b, ROUNDS + 1);
    for (int b = 0; b < nbufs; b++)
        printf("live %s %p %zu %016llx\n", bufs[b].name, (void *)bufs[b].p, bufs[b].len,
               (unsigned long long)checksum(&bufs[b]));
    if (tu_failures)
        return tu_finish("snap_exact", 0);
    printf("ready\n");
    fflush(stdout);

    int sig;
    sigwait(&usr1, &sig);
    return 0;
}
