/* fork_exit_many: forks N children (default 200), one at a time, each of which
 * allocates, checks its memory and ends with _exit (even ones) or _Exit (odd ones), never
 * running exit() or destructors; the parent waits for each and checks its status.
 * Used by inspector/tests/leftovers.rs: such children must leave no file behind.
 *
 * Usage: fork_exit_many [N]. Deterministic output; exit 0.
 */
#include "testutil.h"
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    int n = argc > 1 ? atoi(argv[1]) : 200;
    if (n <= 0)
        DIE("usage: fork_exit_many [N], N above 0");
    int ok = 0;
    for (int i = 0; i < n; i++) {
        pid_t pid = fork();
        if (pid < 0)
            DIE("fork %d: %s", i, strerror(errno));
        if (pid == 0) {
            size_t len = 4096 * (size_t)(1 + i % 7);
            unsigned char *p = malloc(len);
            if (!p)
                _exit(3);
            tu_fill(p, len, (uint64_t)i);
            int code = tu_verify(p, len, (uint64_t)i) == len ? 0 : 4;
            if (i % 2)
                _Exit(code);
            _exit(code);
        }
        int status;
        if (waitpid(pid, &status, 0) != pid)
            DIE("waitpid %d: %s", i, strerror(errno));
        CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child %d: status %#x", i, status);
        ok += WIFEXITED(status) && WEXITSTATUS(status) == 0;
    }
    printf("fork_exit_many: %d of %d children ended well\n", ok, n);
    return tu_finish("fork_exit_many", 0);
}
