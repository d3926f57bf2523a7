/* The kernel writes into heap buffers on the program's behalf (read, pread, recv,
 * getrandom) right after a snapshot, when the buffers are write-protected: every call
 * must complete with the right data. Under the shim a snapshot is taken first through
 * the opt-in API (if the shim is not loaded the program runs the same way without it).
 * Prints the same lines with or without the shim. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <unistd.h>

#include "memshadow.h"

#define N (1 << 20)

static int failures;

static void check(int ok, const char *what) {
    printf("%s: %s\n", what, ok ? "ok" : "FAIL");
    if (!ok) failures++;
}

int main(void) {
    char *file = malloc(N), *a = malloc(N), *b = malloc(N), *c = malloc(N), *d = malloc(4096);
    for (int i = 0; i < N; i++) file[i] = (char)(i * 31 + 7);
    char path[] = "/tmp/memshadow-kernel-writes-XXXXXX";
    int fd = mkstemp(path);
    if (fd < 0 || write(fd, file, N) != N) {
        perror("temp file");
        return 1;
    }
    unlink(path);
    memset(a, 'a', N);
    memset(b, 'b', N);
    memset(c, 'c', N);
    memset(d, 0, 4096);
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0) {
        perror("socketpair");
        return 1;
    }
    for (int round = 0; round < 3; round++) {
        /* Protect everything (when the shim is there), then let the kernel write. */
        if (memshadow_snapshot() < 0 && errno != ENOSYS) {
            printf("snapshot failed: %s\n", strerror(errno));
            return 1;
        }
        check(pread(fd, a, N, 0) == N && memcmp(a, file, N) == 0, "read(2) into a protected buffer");
        check(pread(fd, b + 4096, N / 2, 4096) == N / 2 && memcmp(b + 4096, file + 4096, N / 2) == 0,
              "pread(2) into a protected buffer");
        size_t sent = 0;
        while (sent < 65536) {
            ssize_t w = write(sv[0], file + sent, 65536 - sent);
            if (w <= 0) break;
            sent += (size_t)w;
            ssize_t got = 0;
            while (got < w) {
                ssize_t r = recv(sv[1], c + sent - (size_t)w + (size_t)got, (size_t)(w - got), 0);
                if (r <= 0) break;
                got += r;
            }
        }
        check(sent == 65536 && memcmp(c, file, 65536) == 0, "recv(2) into a protected buffer");
        memset(d, 0, 4096);
        ssize_t r = getrandom(d, 4096, 0);
        int nonzero = 0;
        for (int i = 0; i < 4096; i++) nonzero += d[i] != 0;
        check(r == 4096 && nonzero > 3000, "getrandom(2) into a protected buffer");
    }
    printf("kernel_writes: %s\n", failures ? "FAILED" : "ok");
    return failures ? 1 : 0;
}
