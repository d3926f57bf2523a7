/* trap_anatomy: what one userfaultfd write-protect trap costs on this machine, and where
 * the time goes, without the shim (bench/RESULTS.md, "Where a trap's time goes").
 *
 * A writer thread writes one byte to each of 40,000 random pages of a write-protected
 * 256 MiB region; a handler thread reads each fault, copies the page (4 KiB memcpy) and
 * unprotects it with UFFDIO_WRITEPROTECT, which wakes the writer. Printed: wall time per
 * write, and the handler's time per fault in read(), the copy, the unprotect and the
 * separate wake (UFFDIO_WAKE, with --split).
 *
 * Build: cc -O2 -pthread -o /tmp/trap_anatomy bench/probes/trap_anatomy.c
 * Run:   /tmp/trap_anatomy [--writer-cpu C|-1] [--handler-cpu C|-1] [--sleeping]
 *                          [--split] [--delay-us D] [--busy-cpu C]
 *   --writer-cpu, --handler-cpu  pin the thread to CPU C (-1: not pinned; defaults 0, 1)
 *   --sleeping   the handler sleeps in read() between faults (default: it polls a
 *                non-blocking descriptor, spinning, as the shim's fault thread does
 *                after a trap)
 *   --split      unprotect without waking (UFFDIO_WRITEPROTECT_MODE_DONTWAKE), then
 *                UFFDIO_WAKE, to time the two apart
 *   --delay-us D the handler waits D us after reading a fault before unprotecting
 *   --busy-cpu C another thread of the process spins on CPU C meanwhile
 * Needs userfaultfd with write-protect (Linux 5.7+; run as root or with
 * vm.unprivileged_userfaultfd=1). */
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define PAGES 65536
#define WRITES 40000
#define PAGE 4096

static struct {
    int writer_cpu, handler_cpu, busy_cpu, sleeping, split;
    uint64_t delay_ns;
} opt = {0, 1, -1, 0, 0, 0};

static long uffd;
static char *region;
static volatile int done;
static uint64_t faults, t_read, t_copy, t_unprotect, t_wake;

static uint64_t now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

static void die(const char *what)
{
    perror(what);
    exit(1);
}

static void pin(int cpu)
{
    if (cpu < 0)
        return;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    if (pthread_setaffinity_np(pthread_self(), sizeof set, &set))
        die("pthread_setaffinity_np");
}

static void *handler(void *arg)
{
    (void)arg;
    pin(opt.handler_cpu);
    static char shadow[PAGE];
    struct uffd_msg m;
    while (!done) {
        uint64_t t0 = now_ns();
        if (read((int)uffd, &m, sizeof m) != sizeof m || m.event != UFFD_EVENT_PAGEFAULT)
            continue; /* nothing yet (polling), or not a fault */
        uint64_t t1 = now_ns();
        uint64_t page = m.arg.pagefault.address & ~(uint64_t)(PAGE - 1);
        memcpy(shadow, (void *)page, PAGE);
        while (now_ns() - t1 < opt.delay_ns)
            ;
        uint64_t t2 = now_ns();
        struct uffdio_writeprotect wp = {
            .range = {page, PAGE},
            .mode = opt.split ? UFFDIO_WRITEPROTECT_MODE_DONTWAKE : 0,
        };
        if (ioctl((int)uffd, UFFDIO_WRITEPROTECT, &wp))
            die("UFFDIO_WRITEPROTECT");
        uint64_t t3 = now_ns();
        if (opt.split) {
            struct uffdio_range r = {page, PAGE};
            if (ioctl((int)uffd, UFFDIO_WAKE, &r))
                die("UFFDIO_WAKE");
        }
        uint64_t t4 = now_ns();
        if (opt.sleeping)
            t_read += t1 - t0; /* polling: time between faults, not a cost */
        t_copy += t2 - t1;
        t_unprotect += t3 - t2;
        t_wake += t4 - t3;
        faults++;
    }
    return NULL;
}

static void *busy(void *arg)
{
    (void)arg;
    pin(opt.busy_cpu);
    while (!done)
        __asm__ volatile("pause");
    return NULL;
}

int main(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--sleeping"))
            opt.sleeping = 1;
        else if (!strcmp(a, "--split"))
            opt.split = 1;
        else if (v && !strcmp(a, "--writer-cpu"))
            opt.writer_cpu = atoi(argv[++i]);
        else if (v && !strcmp(a, "--handler-cpu"))
            opt.handler_cpu = atoi(argv[++i]);
        else if (v && !strcmp(a, "--busy-cpu"))
            opt.busy_cpu = atoi(argv[++i]);
        else if (v && !strcmp(a, "--delay-us"))
            opt.delay_ns = (uint64_t)atoi(argv[++i]) * 1000;
        else {
            fprintf(stderr, "trap_anatomy: unknown argument %s (see the comment at the top "
                            "of trap_anatomy.c)\n", a);
            return 2;
        }
    }
    pin(opt.writer_cpu);
    region = mmap(NULL, (size_t)PAGES * PAGE, PROT_READ | PROT_WRITE,
                  MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (region == MAP_FAILED)
        die("mmap");
    memset(region, 1, (size_t)PAGES * PAGE);
    uffd = syscall(SYS_userfaultfd, O_CLOEXEC | (opt.sleeping ? 0 : O_NONBLOCK));
    if (uffd < 0)
        die("userfaultfd");
    struct uffdio_api api = {.api = UFFD_API, .features = UFFD_FEATURE_PAGEFAULT_FLAG_WP};
    if (ioctl((int)uffd, UFFDIO_API, &api))
        die("UFFDIO_API");
    struct uffdio_register reg = {
        .range = {(uint64_t)region, (uint64_t)PAGES * PAGE},
        .mode = UFFDIO_REGISTER_MODE_WP,
    };
    if (ioctl((int)uffd, UFFDIO_REGISTER, &reg))
        die("UFFDIO_REGISTER");
    struct uffdio_writeprotect wp = {
        .range = {(uint64_t)region, (uint64_t)PAGES * PAGE},
        .mode = UFFDIO_WRITEPROTECT_MODE_WP,
    };
    if (ioctl((int)uffd, UFFDIO_WRITEPROTECT, &wp))
        die("UFFDIO_WRITEPROTECT");
    pthread_t h, b;
    if (pthread_create(&h, NULL, handler, NULL))
        die("pthread_create");
    if (opt.busy_cpu >= 0 && pthread_create(&b, NULL, busy, NULL))
        die("pthread_create");
    usleep(10000);
    uint64_t x = 88172645463325252ull, t0 = now_ns();
    for (int i = 0; i < WRITES; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        region[(x % PAGES) * PAGE + 8]++;
    }
    uint64_t elapsed = now_ns() - t0;
    done = 1; /* the process exits below; a sleeping handler stays in read() */
    double n = faults ? (double)faults : 1;
    printf("%.1f us per write (%lu faults); handler per fault: read %.1f, copy %.1f, "
           "unprotect %.1f, wake %.1f us\n",
           elapsed / 1e3 / WRITES, (unsigned long)faults, t_read / 1e3 / n, t_copy / 1e3 / n,
           t_unprotect / 1e3 / n, t_wake / 1e3 / n);
    return 0;
}
