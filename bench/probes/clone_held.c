/* clone_held: what a clone does while a thread's write is held by userfaultfd
 * write-protection (no shim). The fact a holder version that keeps its MADV_WIPEONFORK
 * and MADV_DONTFORK memory as copies would rest on (issue 15's "keep them on shadows"):
 * protect that memory, clone, copy it, drop the protection.
 *
 * 256 MiB written once; a 16-page buffer marked MADV_WIPEONFORK, registered with a
 * userfaultfd nobody reads and write-protected; a thread writes to it (and waits in the
 * kernel); the main thread makes a raw clone (its child reports whether it sees the
 * buffer as zero), reads the buffer, then drops the protection and times how soon the
 * writer goes on.
 *
 * Build: cc -O2 -pthread -o /tmp/clone_held bench/probes/clone_held.c
 * Run:   /tmp/clone_held   (as root, or with vm.unprivileged_userfaultfd=1)
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define BIG (256UL << 20)
#define SMALL (16 * 4096UL)

static char *held;
static volatile int wrote;
static double wrote_at;

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static void *writer(void *arg)
{
    (void)arg;
    held[100] = 42;
    wrote_at = now();
    wrote = 1;
    return NULL;
}

static void die(const char *what)
{
    perror(what);
    exit(1);
}

int main(void)
{
    char *mem = mmap(NULL, BIG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    held = mmap(NULL, SMALL, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED || held == MAP_FAILED)
        die("mmap");
    memset(mem, 1, BIG);
    memset(held, 7, SMALL);
    if (madvise(held, SMALL, MADV_WIPEONFORK) != 0)
        die("madvise");
    int u = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
    if (u < 0)
        die("userfaultfd");
    struct uffdio_api api = {.api = UFFD_API, .features = UFFD_FEATURE_PAGEFAULT_FLAG_WP};
    if (ioctl(u, UFFDIO_API, &api) != 0)
        die("UFFDIO_API");
    struct uffdio_register reg = {.range = {(uintptr_t)held, SMALL},
                                  .mode = UFFDIO_REGISTER_MODE_WP};
    if (ioctl(u, UFFDIO_REGISTER, &reg) != 0)
        die("UFFDIO_REGISTER");
    struct uffdio_writeprotect wp = {.range = {(uintptr_t)held, SMALL},
                                     .mode = UFFDIO_WRITEPROTECT_MODE_WP};
    if (ioctl(u, UFFDIO_WRITEPROTECT, &wp) != 0)
        die("UFFDIO_WRITEPROTECT");
    pthread_t t;
    pthread_create(&t, NULL, writer, NULL);
    usleep(20000);
    printf("the writer is held: %s\n", wrote ? "no" : "yes");
    double t0 = now();
    long pid = syscall(SYS_clone, 0, NULL, NULL, NULL, NULL);
    if (pid == 0)
        syscall(SYS_exit_group, held[100] == 0 ? 3 : 4);
    double t1 = now();
    if (pid < 0)
        die("clone");
    int status = 0;
    waitpid((pid_t)pid, &status, __WALL);
    printf("clone of 256 MiB with the writer held: %.1f ms; the child sees the wiped buffer as %s\n",
           (t1 - t0) * 1e3, WEXITSTATUS(status) == 3 ? "zero" : "not zero");
    printf("the buffer while the writer is held: %d\n", held[100]);
    wp.mode = 0;
    double t2 = now();
    if (ioctl(u, UFFDIO_WRITEPROTECT, &wp) != 0)
        die("UFFDIO_WRITEPROTECT (drop)");
    pthread_join(t, NULL);
    printf("the writer went on %.3f ms after the protection was dropped; the buffer: %d\n",
           (wrote_at - t2) * 1e3, held[100]);
    return 0;
}
