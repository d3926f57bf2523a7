/* signal_alloc: signal handlers that allocate.
 *
 * Phase 1: raise() in a loop, between the main loop's own allocations; the handler
 *          mallocs, fills, verifies and frees (synchronous, so it never interrupts
 *          malloc itself). Half of the rounds run the handler on an alternate signal
 *          stack that was allocated with malloc.
 * Phase 2: SIGALRM from setitimer every millisecond while the main loop allocates.
 *          The handler always uses mmap/munmap (async-signal-safe, and interposed by
 *          the shim, so it may interrupt the shim's own malloc path) and uses malloc
 *          only when the main loop is not inside malloc/free itself (glibc's malloc is
 *          not reentrant). The phase ends after a fixed number of handled signals, so
 *          the printed results do not depend on timing.
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "testutil.h"

static volatile sig_atomic_t handled, handler_bad, in_malloc, handler_mallocs;

static int handler_work(int use_malloc)
{
    int bad = 0;
    if (use_malloc) {
        size_t n = 64 + (size_t)(handled % 16) * 512;
        unsigned char *p = malloc(n);
        if (!p)
            return 1;
        for (size_t i = 0; i < n; i++)
            p[i] = (unsigned char)(i * 7 + 3);
        for (size_t i = 0; i < n; i++)
            bad |= p[i] != (unsigned char)(i * 7 + 3);
        void *q = calloc(4, 100);
        bad |= q == NULL;
        free(q);
        free(p);
        handler_mallocs = handler_mallocs + 1;
    }
    size_t m = 2 * 4096;
    unsigned char *r = mmap(NULL, m, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (r == MAP_FAILED)
        return 1;
    for (size_t i = 0; i < m; i += 512)
        r[i] = (unsigned char)i;
    for (size_t i = 0; i < m; i += 512)
        bad |= r[i] != (unsigned char)i;
    munmap(r, m);
    return bad;
}

static void on_usr1(int sig)
{
    (void)sig;
    int saved = errno;
    if (handler_work(1))
        handler_bad = handler_bad + 1;
    handled = handled + 1;
    errno = saved;
}

static void on_alrm(int sig)
{
    (void)sig;
    int saved = errno;
    if (handler_work(!in_malloc))
        handler_bad = handler_bad + 1;
    handled = handled + 1;
    errno = saved;
}

static uint64_t main_round(uint64_t *rng, void **slots, size_t nslots, int mark)
{
    unsigned s = (unsigned)(tu_next(rng) % nslots);
    size_t sz = 16 + tu_next(rng) % 20000;
    if (mark)
        in_malloc = 1;
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
    free(slots[s]);
    unsigned char *p = malloc(sz);
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
    if (mark)
        in_malloc = 0;
    slots[s] = p;
    if (!p)
        return 0;
    memset(p, (int)(sz & 0xff), sz);
    return p[sz - 1] == (unsigned char)(sz & 0xff);
}

int main(void)
{
    void *slots[64] = {0};
    uint64_t rng = 99, ok = 0;

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr1;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGUSR1, &sa, NULL);

    /* Phase 1a: handler on the normal stack. */
    for (int i = 0; i < 3000; i++) {
        ok += main_round(&rng, slots, 64, 0);
        raise(SIGUSR1);
    }
    /* Phase 1b: handler on an alternate stack that lives in the malloc heap. */
    size_t alt_size = 64 * 1024;
    stack_t ss = {.ss_sp = malloc(alt_size), .ss_size = alt_size, .ss_flags = 0};
    if (!ss.ss_sp || sigaltstack(&ss, NULL) != 0)
        DIE("sigaltstack");
    sa.sa_flags = SA_ONSTACK;
    sigaction(SIGUSR1, &sa, NULL);
    for (int i = 0; i < 3000; i++) {
        ok += main_round(&rng, slots, 64, 0);
        raise(SIGUSR1);
    }
    printf("raise phase: %d signals handled, %d handler failures, %llu main rounds ok\n", (int)handled,
           (int)handler_bad, (unsigned long long)ok);
    CHECK(handled == 6000 && handler_bad == 0 && ok == 6000, "raise phase");
    stack_t off = {.ss_flags = SS_DISABLE};
    sigaltstack(&off, NULL);
    free(ss.ss_sp);

    /* Phase 2: asynchronous SIGALRM. */
    handled = 0;
    handler_bad = 0;
    handler_mallocs = 0;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_alrm;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGALRM, &sa, NULL);
    struct itimerval it = {.it_interval = {0, 1000}, .it_value = {0, 1000}};
    if (setitimer(ITIMER_REAL, &it, NULL) != 0)
        DIE("setitimer");
    struct timespec start, now;
    clock_gettime(CLOCK_MONOTONIC, &start);
    const int want = 300;
    uint64_t rounds = 0;
    int timed_out = 0;
    while (handled < want) {
        main_round(&rng, slots, 64, 1);
        rounds++;
        if (rounds % 256 == 0) {
            clock_gettime(CLOCK_MONOTONIC, &now);
            if (now.tv_sec - start.tv_sec > 20) {
                timed_out = 1;
                break;
            }
        }
    }
    struct itimerval stop = {0};
    setitimer(ITIMER_REAL, &stop, NULL);
    printf("timer phase: at least %d SIGALRM handled: %s, handler failures %d, main loop ran: %s\n", want,
           handled >= want ? "yes" : "NO", (int)handler_bad, rounds > 0 ? "yes" : "no");
    CHECK(!timed_out, "timer phase timed out after %d signals", (int)handled);
    CHECK(handler_bad == 0, "handler failures in the timer phase");

    for (int i = 0; i < 64; i++)
        free(slots[i]);
    return tu_finish("signal_alloc", 0);
}
