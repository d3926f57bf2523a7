/* reused_stack: a thread started on the stack of a thread that has exited.
 *
 * glibc keeps the stacks of exited threads and gives them to new threads. While kept,
 * such a stack is plain anonymous memory to the shim (the thread that had it is gone),
 * so a snapshot tracks it; once a new thread runs on it, it is a stack again, which the
 * next snapshot does not track. The versions that tracked it must keep it whole.
 *
 * Starts a thread that writes its stack and exits (joined), prints
 *     ready
 * waits for SIGUSR2, starts a thread with the same attributes (glibc gives it the kept
 * stack), which writes its stack and waits, and prints
 *     started on the kept stack
 * ("started on another stack" if glibc gave it another one)
 * then waits for SIGUSR1 (or 60 s) and prints "stopped by SIGUSR1" (or "stopped by the
 * time limit"). With `exits`, the second thread exits at once too (glibc discards the
 * stack it ran on, with its own madvise, before "started ..." is printed), as a
 * server's thread for one request does. Runs the same without the shim.
 *
 * With `given`, the second thread runs on a stack the program gives it
 * (pthread_attr_setstack on a 1 MiB block it allocated and wrote before "ready"): the
 * program's data until then, tracked, and a stack from then on; it prints
 * "started on the given stack" and stays.
 *
 * Usage: reused_stack [stays|exits|given] */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <time.h>
#include <unistd.h>

#include "testutil.h"

#define TOUCHED (64 * 1024)

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
static int running, done, exits, given;
#define GIVEN_BYTES (1 << 20)
static void *stack_of[2];

/* Where the calling thread's stack starts. */
static void *my_stack(void)
{
    pthread_attr_t attr;
    void *addr = NULL;
    size_t size = 0;
    if (pthread_getattr_np(pthread_self(), &attr) != 0)
        DIE("pthread_getattr_np");
    pthread_attr_getstack(&attr, &addr, &size);
    pthread_attr_destroy(&attr);
    return addr;
}

static void touch_stack(char value)
{
    volatile char buf[TOUCHED];
    for (size_t i = 0; i < sizeof buf; i += 512)
        buf[i] = value;
}

static void *exits_at_once(void *arg)
{
    stack_of[0] = my_stack();
    touch_stack(1);
    return arg;
}

static void *stays(void *arg)
{
    stack_of[1] = my_stack();
    touch_stack(2);
    pthread_mutex_lock(&lock);
    running = 1;
    pthread_cond_broadcast(&cond);
    while (!done && !exits)
        pthread_cond_wait(&cond, &lock);
    pthread_mutex_unlock(&lock);
    return arg;
}

int main(int argc, char **argv)
{
    exits = argc > 1 && strcmp(argv[1], "exits") == 0;
    given = argc > 1 && strcmp(argv[1], "given") == 0;
    if (argc > 2 || (argc > 1 && !exits && !given && strcmp(argv[1], "stays") != 0))
        DIE("usage: reused_stack [stays|exits|given]");
    void *block = NULL;
    if (given) {
        if (posix_memalign(&block, 4096, GIVEN_BYTES) != 0)
            DIE("posix_memalign");
        memset(block, 7, GIVEN_BYTES);
    }
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGUSR1);
    sigaddset(&sigs, SIGUSR2);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    pthread_t t;
    if (pthread_create(&t, NULL, exits_at_once, NULL) != 0 || pthread_join(t, NULL) != 0)
        DIE("the first thread");
    printf("ready\n");
    fflush(stdout);
    sigset_t usr2;
    sigemptyset(&usr2);
    sigaddset(&usr2, SIGUSR2);
    struct timespec limit = {.tv_sec = 60};
    if (sigtimedwait(&usr2, NULL, &limit) != SIGUSR2)
        DIE("no SIGUSR2 within 60 s");
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    if (given && pthread_attr_setstack(&attr, block, GIVEN_BYTES) != 0)
        DIE("pthread_attr_setstack");
    if (pthread_create(&t, &attr, stays, NULL) != 0)
        DIE("the second thread");
    pthread_mutex_lock(&lock);
    while (!running)
        pthread_cond_wait(&cond, &lock);
    pthread_mutex_unlock(&lock);
    if (exits && pthread_join(t, NULL) != 0)
        DIE("joining the second thread");
    if (given)
        printf("started on %s\n", stack_of[1] == block ? "the given stack" : "another stack");
    else
        printf("started on %s\n", stack_of[0] == stack_of[1] ? "the kept stack" : "another stack");
    fflush(stdout);
    sigset_t usr1;
    sigemptyset(&usr1);
    sigaddset(&usr1, SIGUSR1);
    int sig = sigtimedwait(&usr1, NULL, &limit);
    pthread_mutex_lock(&lock);
    done = 1;
    pthread_cond_broadcast(&cond);
    pthread_mutex_unlock(&lock);
    if (!exits)
        pthread_join(t, NULL);
    printf("%s\n", sig == SIGUSR1 ? "stopped by SIGUSR1" : "stopped by the time limit");
    return 0;
}
