/* Forks while snapshots are being taken: with MEMSHADOW_INTERVAL_MS=1 the parent's epoch
 * thread is in a protect pass much of the time, so some children are forked in the
 * middle of one. Every child writes to its copy of the heap, takes a snapshot of its own
 * (its own, fresh version history) and checks its memory; the parent checks its own.
 *
 * Prints "fork_snapshots: N children, S took a snapshot, parent ok" and exits 0; a child
 * that hangs is killed by the harness's time limit. Natively no snapshot can be taken
 * (S is 0). */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include "memshadow.h"
#include "testutil.h"

#define CHILDREN 200
#define LEN (4 << 20)

int main(void)
{
    unsigned char *buf = malloc(LEN);
    if (!buf)
        DIE("malloc");
    tu_fill(buf, LEN, 1);
    int snapshots = 0;
    for (int i = 0; i < CHILDREN; i++) {
        /* Keep the parent writing, so its passes have work. */
        tu_fill(buf + (size_t)(i % 16) * (LEN / 16), LEN / 16, 100 + i);
        pid_t child = fork();
        if (child < 0)
            DIE("fork");
        if (child == 0) {
            tu_fill(buf, LEN / 4, 5000 + i);
            long long v = memshadow_snapshot();
            tu_fill(buf, LEN / 8, 9000 + i);
            int ok = tu_verify(buf, LEN / 8, 9000 + i) == LEN / 8;
            for (size_t k = LEN / 8; k < LEN / 4; k++)
                ok = ok && buf[k] == tu_byte(5000 + i, k);
            if (v < 0 && errno != ENOSYS)
                ok = 0;
            _exit(!ok ? 3 : v >= 1 ? 10 : 11);
        }
        int status = 0;
        if (waitpid(child, &status, 0) != child)
            DIE("waitpid");
        if (!WIFEXITED(status) || (WEXITSTATUS(status) != 10 && WEXITSTATUS(status) != 11))
            DIE("child %d ended with status %d", i, status);
        snapshots += WEXITSTATUS(status) == 10;
    }
    for (int j = 0; j < 16; j++) {
        int last = (CHILDREN - 1) - ((CHILDREN - 1 - j) % 16); /* the last i with i % 16 == j */
        CHECK(tu_verify(buf + (size_t)j * (LEN / 16), LEN / 16, 100 + last) == LEN / 16, "parent slice %d", j);
    }
    printf("fork_snapshots: %d children, %d took a snapshot, parent %s\n", CHILDREN, snapshots,
           tu_failures ? "FAILED" : "ok");
    return tu_failures ? 1 : 0;
}
