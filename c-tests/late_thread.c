/* late_thread: a thread that is created but not yet running while a snapshot is taken.
 *
 * glibc maps a new thread's stack inside pthread_create; the shim learns it is a stack
 * only when the thread runs. To hold the thread back, the main thread makes itself
 * SCHED_FIFO on one CPU (it needs root, or CAP_SYS_NICE) and starts the thread on the
 * same CPU as a SCHED_OTHER thread, so the thread cannot run while the main thread
 * spins. It prints
 *     ready
 * right after pthread_create, spins SPIN_MS (100) milliseconds, then (the thread has
 * had no CPU: checked) lets the thread run, waits for it and prints
 *     started
 * and then sleeps until SIGUSR1 (or 60 s), printing "stopped by SIGUSR1". A snapshot
 * requested on "ready" is taken while the thread's stack is mapped and unrecorded.
 *
 * Usage: late_thread [SPIN_MS] */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <time.h>
#include <unistd.h>

#include "testutil.h"

static volatile int thread_ran;

static void *body(void *arg)
{
    thread_ran = 1;
    return arg;
}

static double now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

int main(int argc, char **argv)
{
    double spin_ms = argc > 1 ? atof(argv[1]) : 100;
    if (argc > 2 || spin_ms <= 0)
        DIE("usage: late_thread [SPIN_MS]");
    sigset_t usr1;
    sigemptyset(&usr1);
    sigaddset(&usr1, SIGUSR1);
    pthread_sigmask(SIG_BLOCK, &usr1, NULL);

    /* The first CPU this process may run on. */
    cpu_set_t allowed, one;
    if (sched_getaffinity(0, sizeof allowed, &allowed) != 0)
        DIE("sched_getaffinity: %s", strerror(errno));
    int cpu = 0;
    while (cpu < CPU_SETSIZE && !CPU_ISSET(cpu, &allowed))
        cpu++;
    CPU_ZERO(&one);
    CPU_SET(cpu, &one);
    if (sched_setaffinity(0, sizeof one, &one) != 0)
        DIE("sched_setaffinity: %s", strerror(errno));
    struct sched_param fifo = {.sched_priority = 1};
    if (sched_setscheduler(0, SCHED_FIFO, &fifo) != 0)
        DIE("sched_setscheduler(SCHED_FIFO) needs root or CAP_SYS_NICE: %s", strerror(errno));

    pthread_attr_t attr;
    pthread_attr_init(&attr);
    struct sched_param other = {.sched_priority = 0};
    if (pthread_attr_setinheritsched(&attr, PTHREAD_EXPLICIT_SCHED) != 0
        || pthread_attr_setschedpolicy(&attr, SCHED_OTHER) != 0
        || pthread_attr_setschedparam(&attr, &other) != 0
        || pthread_attr_setaffinity_np(&attr, sizeof one, &one) != 0)
        DIE("thread attributes");
    pthread_t t;
    int rc = pthread_create(&t, &attr, body, NULL);
    if (rc != 0)
        DIE("pthread_create: %s", strerror(rc));
    printf("ready\n");
    fflush(stdout);
    double until = now_ms() + spin_ms;
    while (now_ms() < until)
        ;
    CHECK(!thread_ran, "the thread ran while the main thread spun: it was not held back");
    /* Back to SCHED_OTHER: the thread gets the CPU. */
    if (sched_setscheduler(0, SCHED_OTHER, &other) != 0)
        DIE("sched_setscheduler(SCHED_OTHER): %s", strerror(errno));
    pthread_join(t, NULL);
    printf("started\n");
    fflush(stdout);
    struct timespec limit = {.tv_sec = 60};
    if (sigtimedwait(&usr1, NULL, &limit) == SIGUSR1)
        printf("stopped by SIGUSR1\n");
    else
        printf("stopped by the time limit\n");
    return tu_failures ? 1 : 0;
}
