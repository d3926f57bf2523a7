/* fork_child: children created by fork() allocate, write, verify and exit with a code
 * the parent checks; copy-on-write isolation both ways; a grandchild; a child killed by
 * a signal; and forks from a parent whose other threads keep allocating. */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "testutil.h"

#define MiB (1024UL * 1024UL)

static const char *describe(int status, char *buf, size_t n)
{
    if (WIFEXITED(status))
        snprintf(buf, n, "exit %d", WEXITSTATUS(status));
    else if (WIFSIGNALED(status))
        snprintf(buf, n, "signal %s", WTERMSIG(status) == SIGTERM   ? "SIGTERM"
                                      : WTERMSIG(status) == SIGKILL ? "SIGKILL"
                                                                    : "other");
    else
        snprintf(buf, n, "status %#x", status);
    return buf;
}

static int wait_for(pid_t pid)
{
    int status = 0;
    while (waitpid(pid, &status, 0) < 0)
        if (errno != EINTR)
            DIE("waitpid: %s", tu_errno_name(errno));
    return status;
}

/* Child work: allocate a mix of blocks, fill, verify; the exit code is derived from the
 * verification so a corrupted child cannot exit with the expected code. */
static int child_work(uint64_t seed)
{
    size_t sizes[] = {100, 5000, 200000, MiB};
    uint64_t h = 0;
    for (int round = 0; round < 3; round++)
        for (size_t i = 0; i < 4; i++) {
            unsigned char *p = malloc(sizes[i]);
            if (!p)
                return 99;
            tu_fill(p, sizes[i], seed + i);
            if (tu_verify(p, sizes[i], seed + i) != sizes[i])
                return 98;
            h += p[sizes[i] / 2];
            free(p);
        }
    char *m = mmap(NULL, 2 * MiB, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED)
        return 97;
    tu_fill_words(m, 2 * MiB, seed);
    if (tu_verify_words(m, 2 * MiB, seed) != 2 * MiB)
        return 96;
    munmap(m, 2 * MiB);
    return 10 + (int)(h % 50);
}

static int expected_code(uint64_t seed)
{
    size_t sizes[] = {100, 5000, 200000, MiB};
    uint64_t h = 0;
    for (int round = 0; round < 3; round++)
        for (size_t i = 0; i < 4; i++)
            h += tu_byte(seed + i, sizes[i] / 2);
    return 10 + (int)(h % 50);
}

static void simple_children(void)
{
    for (uint64_t k = 0; k < 4; k++) {
        fflush(stdout);
        pid_t pid = fork();
        if (pid < 0)
            DIE("fork");
        if (pid == 0)
            _exit(child_work(500 + k));
        char buf[64];
        int st = wait_for(pid);
        int want = expected_code(500 + k);
        printf("child %llu: %s (expected exit %d)\n", (unsigned long long)k, describe(st, buf, sizeof buf), want);
        CHECK(WIFEXITED(st) && WEXITSTATUS(st) == want, "child %llu exit", (unsigned long long)k);
    }
    /* exit() instead of _exit(): atexit handlers and stdio flushing run in the child. */
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        printf("child via exit(): hello from the child\n");
        exit(child_work(600) == expected_code(600) ? 21 : 1);
    }
    char buf[64];
    printf("child via exit(): %s\n", describe(wait_for(pid), buf, sizeof buf));
}

/* Copy-on-write: after fork, writes on either side are invisible to the other. */
static void cow_isolation(void)
{
    size_t n = 8 * MiB;
    unsigned char *heap = malloc(n);
    tu_fill_words(heap, n, 1);
    int to_child[2], to_parent[2];
    if (pipe(to_child) || pipe(to_parent))
        DIE("pipe");
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        char c;
        /* Wait until the parent has overwritten its copy. */
        if (read(to_child[0], &c, 1) != 1)
            _exit(2);
        int ok = tu_verify_words(heap, n, 1) == n;
        tu_fill_words(heap, n, 3); /* the child's own writes */
        ok &= tu_verify_words(heap, n, 3) == n;
        if (write(to_parent[1], "x", 1) != 1)
            _exit(3);
        _exit(ok ? 31 : 4);
    }
    tu_fill_words(heap, n, 2);
    if (write(to_child[1], "x", 1) != 1)
        DIE("write");
    char c;
    if (read(to_parent[0], &c, 1) != 1)
        DIE("read");
    int parent_ok = tu_verify_words(heap, n, 2) == n;
    char buf[64];
    int st = wait_for(pid);
    printf("copy-on-write: child %s, parent copy %s\n", describe(st, buf, sizeof buf),
           parent_ok ? "kept" : "CHANGED BY CHILD");
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 31, "child saw parent's writes or failed");
    CHECK(parent_ok, "parent saw child's writes");
    close(to_child[0]);
    close(to_child[1]);
    close(to_parent[0]);
    close(to_parent[1]);
    free(heap);
}

static void grandchild_and_signal(void)
{
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        pid_t g = fork();
        if (g == 0)
            _exit(child_work(700) == expected_code(700) ? 41 : 1);
        int st = 0;
        waitpid(g, &st, 0);
        _exit(WIFEXITED(st) && WEXITSTATUS(st) == 41 ? 42 : 1);
    }
    char buf[64];
    printf("child that forks a grandchild: %s\n", describe(wait_for(pid), buf, sizeof buf));

    fflush(stdout);
    pid = fork();
    if (pid == 0) {
        void *p = malloc(1000);
        memset(p, 1, 1000);
        raise(SIGTERM);
        _exit(1);
    }
    printf("child killed by a signal: %s\n", describe(wait_for(pid), buf, sizeof buf));
}

static volatile int stop_threads;

static void *churner(void *arg)
{
    uint64_t rng = (uintptr_t)arg;
    uint64_t n = 0;
    void *keep[32] = {0};
    while (!__atomic_load_n(&stop_threads, __ATOMIC_RELAXED)) {
        unsigned slot = (unsigned)(tu_next(&rng) % 32);
        free(keep[slot]);
        size_t sz = 16 + tu_next(&rng) % 70000;
        keep[slot] = malloc(sz);
        memset(keep[slot], (int)sz, sz);
        n++;
    }
    for (int i = 0; i < 32; i++)
        free(keep[i]);
    return (void *)(uintptr_t)(n > 0);
}

static void fork_from_threads(void)
{
    pthread_t th[4];
    for (uintptr_t i = 0; i < 4; i++)
        if (pthread_create(&th[i], NULL, churner, (void *)(i + 1)) != 0)
            DIE("pthread_create");
    int good = 0;
    for (int k = 0; k < 12; k++) {
        fflush(stdout);
        pid_t pid = fork();
        if (pid < 0)
            DIE("fork");
        if (pid == 0)
            /* Only this thread exists in the child; malloc must still work. */
            _exit(child_work(800 + (uint64_t)k) == expected_code(800 + (uint64_t)k) ? 51 : 1);
        int st = wait_for(pid);
        good += WIFEXITED(st) && WEXITSTATUS(st) == 51;
        /* Give the threads time to be in the middle of malloc at the next fork. */
        usleep(2000);
    }
    __atomic_store_n(&stop_threads, 1, __ATOMIC_RELAXED);
    int ran = 0;
    for (int i = 0; i < 4; i++) {
        void *r;
        pthread_join(th[i], &r);
        ran += (int)(uintptr_t)r;
    }
    printf("forks from a multi-threaded parent: %d of 12 children exited 51\n", good);
    CHECK(good == 12, "children of a multi-threaded parent failed");
    CHECK(ran == 4, "churner threads did not run");
}

int main(void)
{
    printf("fork_child\n");
    simple_children();
    cow_isolation();
    grandchild_and_signal();
    fork_from_threads();
    return tu_finish("fork_child", 0);
}
