/* Consistency under concurrent writers: 4 threads each own a chain of 64 pages spread
 * over one 16 MiB heap block, in a shuffled order (not the pages' address order;
 * deterministic, different per thread). Each thread loops over rounds r = 1, 2, 3, ...
 * and stores r into the first 8 bytes of each page of its chain, in chain order.
 *
 * So at every real instant each chain reads r, ..., r, r-1, ..., r-1 (non-increasing
 * along the chain, first minus last at most 1): a snapshot in which a chain does not
 * is torn, a state the memory never had. The harness (inspector/tests/snapshots.rs)
 * takes snapshots from outside while the threads run and checks every chain in each.
 *
 * Layout: the 256 chain pages are 16 runs of 16 adjacent pages, one run in each MiB of
 * the block, so they span every 2 MiB piece the shim write-protects with one ioctl
 * (a torn snapshot needs a chain that crosses pieces), while the harness can read all
 * of them back with 16 requests per snapshot. The runs' pages are shuffled and dealt
 * to the threads, so neighbouring pages belong to different threads.
 *
 * Usage: snap_consistency [SECONDS [SELF]]
 *
 * Output:
 *     chain T 0xADDR0 0xADDR1 ... 0xADDR63     (T = 0..3, in chain order)
 *     ready
 * then runs until SIGUSR1 (or SECONDS, default 60), stops the threads and prints
 *     rounds T N
 *     stopped by SIGUSR1 | stopped by the time limit
 * and exits 0. Needs nothing from the shim; runs the same without it.
 *
 * With SELF > 0, the main thread also takes SELF snapshots itself with
 * memshadow_snapshot() right after "ready", while the writers run (on a machine with
 * fewer cores than writers it is preempted all the time), then prints
 *     self SELF LAST-VERSION
 * or "snapshot failed: ENOSYS" (or the error text) and then exits 1 at the end.
 *
 * With SNAP_OWN_UFFD=1 in the environment, the block is an anonymous mapping the program
 * registers with a userfaultfd of its own (write-protect mode; it never protects a page,
 * so its writes never stop) before printing the chains, and says
 *     own userfaultfd registered
 * A range registered with one userfaultfd cannot be registered with another: the shim
 * must still see the writes to it (it cannot track them by write-protection), and must
 * leave the program's registration alone: at the end the program un-protects the block
 * through its descriptor (which works only while the block is registered with it) and
 * prints
 *     own userfaultfd still registered
 * (or a FAIL line).
 *
 * With SNAP_MARK_HALF=wipeonfork (or dontfork), the block is an anonymous mapping whose
 * first half the program marks MADV_WIPEONFORK (MADV_DONTFORK) before printing the
 * chains: every chain crosses memory a holder child does not keep as it is (zero there,
 * or not there at all) and memory it does. */
#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "memshadow.h"
#include "testutil.h"

#define THREADS 4
#define CHAIN 64
#define MIB (1u << 20)
#define REGION (16 * MIB)
#define PAGE 4096u
#define RUNS 16
#define RUN_PAGES 16 /* RUNS * RUN_PAGES == THREADS * CHAIN */
#define DEFAULT_LIMIT_S 60

struct chain {
    int id;
    uint64_t *page[CHAIN]; /* first word of each page, in chain order */
    uint64_t rounds;
};

static struct chain chains[THREADS];
static int stop;

/* A userfaultfd of the program's own with `block` registered for write-protection;
 * dies if the kernel refuses. */
static int register_own_userfaultfd(unsigned char *block, size_t len)
{
    int u = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
    if (u < 0)
        DIE("userfaultfd: %s", strerror(errno));
    struct uffdio_api api = {.api = UFFD_API};
    if (ioctl(u, UFFDIO_API, &api) != 0)
        DIE("UFFDIO_API: %s", strerror(errno));
    struct uffdio_register reg = {
        .range = {(unsigned long)block, len},
        .mode = UFFDIO_REGISTER_MODE_WP,
    };
    if (ioctl(u, UFFDIO_REGISTER, &reg) != 0)
        DIE("UFFDIO_REGISTER: %s", strerror(errno));
    return u;
}

static void *writer(void *arg)
{
    struct chain *c = arg;
    uint64_t r = 0;
    while (!__atomic_load_n(&stop, __ATOMIC_RELAXED)) {
        r++;
        /* Release stores: the compiler keeps them in chain order (x86 keeps them in
         * order anyway). */
        for (int i = 0; i < CHAIN; i++)
            __atomic_store_n(c->page[i], r, __ATOMIC_RELEASE);
    }
    c->rounds = r;
    return NULL;
}

int main(int argc, char **argv)
{
    long limit_s = argc > 1 ? atol(argv[1]) : DEFAULT_LIMIT_S;
    long self = argc > 2 ? atol(argv[2]) : 0;
    if (argc > 3 || limit_s < 1 || self < 0) {
        fprintf(stderr, "usage: snap_consistency [SECONDS [SELF]]\n");
        return 2;
    }
    sigset_t usr1;
    sigemptyset(&usr1);
    sigaddset(&usr1, SIGUSR1);
    pthread_sigmask(SIG_BLOCK, &usr1, NULL); /* inherited by the writers */

    const char *own = getenv("SNAP_OWN_UFFD");
    int own_uffd = -1;
    unsigned char *region;
    if (own && strcmp(own, "1") == 0) {
        region = mmap(NULL, REGION, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (region == MAP_FAILED)
            DIE("cannot map %u bytes", REGION);
        own_uffd = register_own_userfaultfd(region, REGION);
        printf("own userfaultfd registered\n");
    } else if (getenv("SNAP_MARK_HALF")) {
        const char *mark = getenv("SNAP_MARK_HALF");
        int advice = strcmp(mark, "wipeonfork") == 0 ? MADV_WIPEONFORK
                     : strcmp(mark, "dontfork") == 0 ? MADV_DONTFORK
                                                      : -1;
        if (advice < 0)
            DIE("SNAP_MARK_HALF is wipeonfork or dontfork, not %s", mark);
        region = mmap(NULL, REGION, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (region == MAP_FAILED)
            DIE("cannot map %u bytes", REGION);
        if (madvise(region, REGION / 2, advice) != 0)
            DIE("madvise(%s): %s", mark, strerror(errno));
    } else {
        region = aligned_alloc(PAGE, REGION);
        if (!region)
            DIE("cannot allocate %u bytes", REGION);
    }

    /* The chain pages: run k (k = 0..15) starts at a varying page of MiB k. One shuffle
     * of all of them; thread t takes the t-th stretch of 64. */
    static uint32_t perm[RUNS * RUN_PAGES];
    for (uint32_t k = 0; k < RUNS; k++)
        for (uint32_t i = 0; i < RUN_PAGES; i++)
            perm[k * RUN_PAGES + i] = k * (MIB / PAGE) + (k * 53) % (MIB / PAGE - RUN_PAGES) + i;
    uint64_t seed = 0x5eed0c0ffee;
    for (uint32_t i = RUNS * RUN_PAGES - 1; i > 0; i--) {
        uint32_t j = (uint32_t)(tu_next(&seed) % (i + 1));
        uint32_t t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
    for (int t = 0; t < THREADS; t++) {
        chains[t].id = t;
        printf("chain %d", t);
        for (int i = 0; i < CHAIN; i++) {
            chains[t].page[i] = (uint64_t *)(region + (size_t)perm[t * CHAIN + i] * PAGE);
            *chains[t].page[i] = 0;
            printf(" %p", (void *)chains[t].page[i]);
        }
        printf("\n");
    }

    pthread_t th[THREADS];
    for (int t = 0; t < THREADS; t++)
        if (pthread_create(&th[t], NULL, writer, &chains[t]) != 0)
            DIE("pthread_create failed");
    printf("ready\n");
    fflush(stdout);

    int failed = 0;
    if (self > 0) {
        long long prev = 0;
        for (long i = 0; i < self; i++) {
            long long v = memshadow_snapshot();
            if (v < 0) {
                printf("snapshot failed: %s\n", errno == ENOSYS ? "ENOSYS" : strerror(errno));
                failed = 1;
                break;
            }
            CHECK(v > prev, "snapshot %ld returned version %lld after %lld", i, v, prev);
            prev = v;
        }
        if (!failed)
            printf("self %ld %lld\n", self, prev);
        fflush(stdout);
    }

    struct timespec limit = {limit_s, 0};
    int sig;
    do
        sig = sigtimedwait(&usr1, NULL, &limit);
    while (sig < 0 && errno == EINTR);
    __atomic_store_n(&stop, 1, __ATOMIC_RELAXED);
    for (int t = 0; t < THREADS; t++)
        pthread_join(th[t], NULL);
    for (int t = 0; t < THREADS; t++)
        printf("rounds %d %llu\n", t, (unsigned long long)chains[t].rounds);
    if (own_uffd >= 0) {
        struct uffdio_writeprotect wp = {.range = {(unsigned long)region, REGION}, .mode = 0};
        if (ioctl(own_uffd, UFFDIO_WRITEPROTECT, &wp) != 0)
            FAIL("own userfaultfd lost its registration: %s", strerror(errno));
        else
            printf("own userfaultfd still registered\n");
    }
    printf("stopped by %s\n", sig == SIGUSR1 ? "SIGUSR1" : "the time limit");
    return failed || tu_failures ? 1 : 0;
}
