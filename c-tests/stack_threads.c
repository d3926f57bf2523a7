/* Starts N threads with 1 MiB stacks that touch their stack, prints "ready" once all
 * are running, and keeps them alive until SIGUSR1 arrives. Used to check that thread
 * stacks are tracked only with MEMSHADOW_TRACK=heap+stacks.
 * Usage: stack_threads N */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static pthread_barrier_t started;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t done_cond = PTHREAD_COND_INITIALIZER;
static int done;

static void *worker(void *arg) {
    (void)arg;
    volatile char buf[16 * 1024];
    memset((char *)buf, 1, sizeof buf); /* touch the stack */
    pthread_barrier_wait(&started);
    pthread_mutex_lock(&lock);
    while (!done) pthread_cond_wait(&done_cond, &lock);
    pthread_mutex_unlock(&lock);
    return NULL;
}

int main(int argc, char **argv) {
    int n = argc > 1 ? atoi(argv[1]) : 8;
    if (n < 1 || n > 256) {
        fprintf(stderr, "usage: stack_threads N (1..256)\n");
        return 2;
    }
    sigset_t usr1;
    sigemptyset(&usr1);
    sigaddset(&usr1, SIGUSR1);
    pthread_sigmask(SIG_BLOCK, &usr1, NULL); /* inherited by the threads */
    pthread_t th[256];
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 1 << 20);
    pthread_barrier_init(&started, NULL, (unsigned)n + 1);
    for (int i = 0; i < n; i++) {
        if (pthread_create(&th[i], &attr, worker, NULL) != 0) {
            fprintf(stderr, "pthread_create failed\n");
            return 1;
        }
    }
    pthread_barrier_wait(&started);
    printf("ready\n");
    fflush(stdout);
    int sig;
    sigwait(&usr1, &sig);
    pthread_mutex_lock(&lock);
    done = 1;
    pthread_cond_broadcast(&done_cond);
    pthread_mutex_unlock(&lock);
    for (int i = 0; i < n; i++) pthread_join(th[i], NULL);
    printf("joined %d\n", n);
    return 0;
}
