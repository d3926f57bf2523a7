/* dup_race: a thread that keeps putting a descriptor of its own on the lowest free
 * number (dup2 onto it, check it, close it), as a program that dup2()s onto numbers it
 * picks does, while the shim answers control-socket connections from outside.
 *
 * The shim's accept() of a connection takes the lowest free number, then moves the
 * connection out of the program's way (dup, close). A dup2() of the program's landing
 * between the two would make the shim take the program's file for the connection and
 * close the program's descriptor: the program's next close() of it fails (EBADF), or its
 * number no longer holds its file. Each such loss prints a FAIL line.
 *
 * Prints "ready", runs until SIGUSR1 (or 60 s), then prints "dup2 rounds: many" (or
 * "dup2 rounds: few" when it ran fewer than 1000 rounds) and "stopped by SIGUSR1" (or
 * "stopped by the time limit"); exits 1 after a FAIL. Runs the same without the shim.
 *
 * Usage: dup_race */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "testutil.h"

static int stop;
static int devnull;
static struct stat devnull_st;

static void *juggler(void *arg)
{
    unsigned long *rounds = arg;
    while (!__atomic_load_n(&stop, __ATOMIC_RELAXED)) {
        /* The lowest free number now: where an accept() would land. */
        int n = dup(devnull);
        if (n < 0)
            DIE("dup: %s", strerror(errno));
        if (close(n) != 0)
            DIE("close of a fresh dup: %s", strerror(errno));
        if (dup2(devnull, n) != n) {
            FAIL("dup2 onto %d: %s", n, strerror(errno));
            continue;
        }
        struct stat st;
        if (fstat(n, &st) != 0 || st.st_dev != devnull_st.st_dev || st.st_ino != devnull_st.st_ino)
            FAIL("descriptor %d does not hold the file dup2 put there", n);
        if (close(n) != 0)
            FAIL("descriptor %d, put there by dup2, was closed behind the program's back: %s", n,
                 strerror(errno));
        (*rounds)++;
    }
    return NULL;
}

int main(int argc, char **argv)
{
    (void)argv;
    if (argc > 1)
        DIE("usage: dup_race");
    sigset_t usr1;
    sigemptyset(&usr1);
    sigaddset(&usr1, SIGUSR1);
    pthread_sigmask(SIG_BLOCK, &usr1, NULL);
    devnull = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (devnull < 0 || fstat(devnull, &devnull_st) != 0)
        DIE("/dev/null: %s", strerror(errno));
    unsigned long rounds = 0;
    pthread_t t;
    if (pthread_create(&t, NULL, juggler, &rounds) != 0)
        DIE("pthread_create");
    printf("ready\n");
    fflush(stdout);
    struct timespec limit = {.tv_sec = 60};
    int sig = sigtimedwait(&usr1, NULL, &limit);
    __atomic_store_n(&stop, 1, __ATOMIC_RELAXED);
    pthread_join(t, NULL);
    printf("dup2 rounds: %s\n", rounds >= 1000 ? "many" : "few");
    printf("%s\n", sig == SIGUSR1 ? "stopped by SIGUSR1" : "stopped by the time limit");
    return tu_failures ? 1 : 0;
}
