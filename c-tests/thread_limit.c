/* thread_limit: the first snapshot is asked for while the process may not start a
 * thread (RLIMIT_NPROC 0, for a user other than root), so the shim cannot start its
 * fault thread; then the limit is lifted, a second snapshot is asked for and the program
 * writes its memory. The shim must not be left with memory protected and no thread to
 * resolve the faults (the program would hang on its first write).
 *
 * Prints "thread_limit: ok" and exits 0 natively (both snapshots -1) and under the shim
 * (the first -1, the second a version, reported on stderr only). Run as a user other
 * than root with CAP_SYS_PTRACE (for userfaultfd): root ignores RLIMIT_NPROC.
 */
#define _GNU_SOURCE
#include <sys/resource.h>

#include "memshadow.h"
#include "testutil.h"

#define BYTES (4 << 20)

int main(void)
{
    struct rlimit old;
    if (getrlimit(RLIMIT_NPROC, &old) != 0)
        DIE("getrlimit");
    char *buf = malloc(BYTES);
    memset(buf, 1, BYTES);
    struct rlimit none = {0, old.rlim_max};
    if (setrlimit(RLIMIT_NPROC, &none) != 0)
        DIE("setrlimit: %s", tu_errno_name(errno));
    long long first = memshadow_snapshot();
    if (setrlimit(RLIMIT_NPROC, &old) != 0)
        DIE("setrlimit back: %s", tu_errno_name(errno));
    long long second = memshadow_snapshot();
    for (int i = 0; i < BYTES; i += 4096)
        buf[i] = 2;
    long sum = 0;
    for (int i = 0; i < BYTES; i += 4096)
        sum += buf[i];
    CHECK(sum == 2 * (BYTES / 4096), "sum %ld", sum);
    fprintf(stderr, "snapshots: %lld then %lld\n", first, second);
    free(buf);
    printf("thread_limit: ok\n");
    return tu_failures ? 1 : 0;
}
