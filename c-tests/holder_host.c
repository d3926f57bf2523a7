/* A host that must behave exactly the same with the shim keeping its snapshots in holder
 * children (MEMSHADOW_BACKEND=holder, MEMSHADOW_INTERVAL_MS=10) as without the shim.
 * Used by inspector/tests/holder.rs. Each mode first runs while snapshots are taken
 * (keep_busy: about 80 ms of writes, several holders alive), then does what a holder
 * could disturb:
 *
 *   pipe      closes a pipe's write end and reads to EOF (a holder holding a copy of the
 *             descriptor table would keep it open: the read would block; alarm() ends
 *             the program then); also with the close made by another thread while the
 *             main one is blocked in read
 *   wait      forks children that exit with known statuses, reaps them with wait(-1)
 *             (blocking) and waitpid(-1, WNOHANG), then wait(-1) must fail with ECHILD;
 *             counts SIGCHLD (one per child)
 *   forkexec  fork + exec of `sh -c 'exit N'`, posix_spawn of /bin/echo, system()
 *   wipe      a MADV_WIPEONFORK buffer keeps its bytes in the host (and reads zero in
 *             a forked child), as without the shim
 *   refused   the holders' clones refused with ENOMEM (a seccomp filter, all threads:
 *             `clone` without CLONE_VM and with CLONE_PIDFD; threads, fork and exec are
 *             untouched), then the same writes and a fork: the shim must fall back to
 *             shadows and the program notice nothing
 *   undumpable as refused, but the program makes itself not dumpable (PR_SET_DUMPABLE 0)
 *             instead: a holder could not be read, so the shim must use shadows
 *   serve     the byte-exact check: writes known patterns into a buffer, takes a
 *             snapshot with memshadow_snapshot() after each round and prints
 *             "V 0xADDR LEN CHECKSUM" (FNV-1a 64) of the buffer as it was then; also
 *             "wipe 0xADDR LEN" for a MADV_WIPEONFORK buffer; then "ready", and waits for
 *             SIGUSR1 (nothing is written after "ready")
 *
 * `serve refused` does serve with the holders' clones refused, as `refused` does.
 *
 *   switch    serve's rounds for MEMSHADOW_BACKEND=auto, each after a phase that moves
 *             the shim from one backend to the other: 700 ms of writes to random pages
 *             of 64 MiB (every first write traps: auto moves to holders) before rounds 0, 2, 4,
 *             700 ms of quiet (a holder costs more than nothing: back to shadows) before
 *             rounds 1, 3, 5; prints serve's lines (no wipe line), then "ready"
 *   switch wipe  the same with a MADV_WIPEONFORK buffer written each round too, and
 *             its line for each version after the other buffer's: a holder does not
 *             keep it, so the shim must keep it on shadows beside the holders
 *   keep      serve's check for memory a holder does not keep: each round writes a
 *             malloc'd buffer, a MADV_WIPEONFORK one and a MADV_DONTFORK one (after
 *             keep_busy: background holders in between), takes a snapshot and prints
 *             serve's line for each of the three; then "ready"
 *   toggle    a buffer another thread marks MADV_WIPEONFORK and unmarks, flat out,
 *             while the program takes TOGGLE_SNAPSHOTS snapshots with
 *             memshadow_snapshot(), printing serve's line for the buffer after each (its
 *             bytes never change); then "ready". Whether a holder's clone met the
 *             buffer marked is known only from the holder itself.
 *
 * Output is deterministic except serve's addresses and versions. */
#include <errno.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/sched.h>
#include <linux/seccomp.h>
#include <pthread.h>
#include <stddef.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <signal.h>
#include <spawn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "memshadow.h"
#include "testutil.h"

extern char **environ;

#define BUSY_BYTES (8 << 20)
static unsigned char *busy;

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

/* Writes scattered pages for about `ms` milliseconds: with snapshots every 10 ms,
 * several holders are alive afterwards, each holding memory the program changed. */
static void keep_busy(int ms)
{
    if (!busy) {
        busy = malloc(BUSY_BYTES);
        if (!busy)
            DIE("malloc busy");
        memset(busy, 1, BUSY_BYTES);
    }
    uint64_t x = 88172645463325252ULL;
    double end = now_s() + ms / 1000.0;
    while (now_s() < end) {
        for (int i = 0; i < 256; i++) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            busy[x % BUSY_BYTES]++;
        }
    }
}

static void *close_later(void *arg)
{
    int fd = *(int *)arg;
    usleep(30 * 1000);
    close(fd);
    return NULL;
}

static size_t read_to_eof(int fd)
{
    size_t total = 0;
    char buf[256];
    for (;;) {
        ssize_t n = read(fd, buf, sizeof buf);
        if (n == 0)
            return total;
        if (n < 0) {
            if (errno == EINTR)
                continue;
            FAIL("read: %s", tu_errno_name(errno));
            return total;
        }
        total += n;
    }
}

static void mode_pipe(void)
{
    for (int round = 0; round < 3; round++) {
        int p[2];
        if (pipe(p) != 0)
            DIE("pipe");
        CHECK(write(p[1], "hello", 5) == 5, "write");
        keep_busy(80);
        close(p[1]);
        size_t n = read_to_eof(p[0]);
        printf("round %d: eof after %zu bytes\n", round, n);
        close(p[0]);

        /* The write end closed by another thread while this one waits in read. */
        if (pipe(p) != 0)
            DIE("pipe");
        pthread_t t;
        if (pthread_create(&t, NULL, close_later, &p[1]) != 0)
            DIE("pthread_create");
        keep_busy(40);
        n = read_to_eof(p[0]);
        pthread_join(t, NULL);
        printf("round %d: eof from the other thread's close after %zu bytes\n", round, n);
        close(p[0]);
    }
}

static volatile sig_atomic_t sigchld_count;

static void on_sigchld(int sig)
{
    (void)sig;
    sigchld_count++;
}

static void mode_wait(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sigchld;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    sigaction(SIGCHLD, &sa, NULL);
    const int children = 6;
    for (int i = 0; i < children; i++) {
        keep_busy(40);
        pid_t pid = fork();
        if (pid < 0)
            DIE("fork");
        if (pid == 0) {
            usleep(20 * 1000);
            char *p = malloc(1 << 20);
            if (p)
                memset(p, i, 1 << 20);
            _exit(10 + i);
        }
        int status = 0;
        pid_t got;
        if (i % 2 == 0) {
            /* Blocking: returns when the child exits, never with a holder. */
            do
                got = wait(&status);
            while (got < 0 && errno == EINTR);
        } else {
            /* Polling while holders come and go. */
            for (;;) {
                got = waitpid(-1, &status, WNOHANG);
                if (got != 0)
                    break;
                keep_busy(2);
            }
        }
        CHECK(got == pid, "child %d: wait(-1) returned another process (%s)", i,
              got < 0 ? tu_errno_name(errno) : "a pid");
        printf("child %d: exited %d\n", i, WIFEXITED(status) ? WEXITSTATUS(status) : -1);
        keep_busy(20);
        errno = 0;
        got = waitpid(-1, &status, WNOHANG);
        printf("child %d: then waitpid(-1, WNOHANG) = %s\n", i,
               got == -1 && errno == ECHILD ? "ECHILD" : got == 0 ? "0" : "a pid");
        errno = 0;
        got = wait(&status);
        printf("child %d: then wait(-1) = %s\n", i,
               got == -1 && errno == ECHILD ? "ECHILD" : "something");
    }
    /* SIGCHLDs that arrive together merge: wait for each child's, at most 2 s. */
    for (int i = 0; i < 200 && sigchld_count < children; i++)
        usleep(10 * 1000);
    printf("SIGCHLD received %d times\n", (int)sigchld_count);
}

static void mode_forkexec(void)
{
    for (int round = 0; round < 3; round++) {
        keep_busy(40);
        pid_t pid = fork();
        if (pid < 0)
            DIE("fork");
        if (pid == 0) {
            char code[16];
            snprintf(code, sizeof code, "exit %d", 3 + round);
            execl("/bin/sh", "sh", "-c", code, (char *)NULL);
            _exit(127);
        }
        int status = 0;
        CHECK(waitpid(pid, &status, 0) == pid, "waitpid");
        printf("round %d: sh exited %d\n", round, WIFEXITED(status) ? WEXITSTATUS(status) : -1);
        fflush(stdout);

        char *argv[] = {"echo", "spawned", NULL};
        pid_t spawned;
        CHECK(posix_spawn(&spawned, "/bin/echo", NULL, NULL, argv, environ) == 0,
              "posix_spawn");
        CHECK(waitpid(spawned, &status, 0) == spawned && WIFEXITED(status) &&
                  WEXITSTATUS(status) == 0,
              "echo");
        int rc = system("exit 7");
        printf("round %d: system() = %d\n", round, WIFEXITED(rc) ? WEXITSTATUS(rc) : -1);
        fflush(stdout);
    }
}

#define WIPE_BYTES (16 * 4096)

/* A private anonymous buffer of WIPE_BYTES marked with `advice` (named `name`), filled
 * with the words of `seed`. */
static unsigned char *marked_buffer(int advice, const char *name, int seed)
{
    unsigned char *w = mmap(NULL, WIPE_BYTES, PROT_READ | PROT_WRITE,
                            MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (w == MAP_FAILED)
        DIE("mmap");
    if (madvise(w, WIPE_BYTES, advice) != 0)
        DIE("madvise(%s): %s", name, tu_errno_name(errno));
    tu_fill_words(w, WIPE_BYTES, seed);
    return w;
}

/* A MADV_WIPEONFORK buffer (zero in a child). */
static unsigned char *wipe_buffer(void)
{
    return marked_buffer(MADV_WIPEONFORK, "MADV_WIPEONFORK", 77);
}

static void mode_wipe(void)
{
    unsigned char *w = wipe_buffer();
    for (int round = 0; round < 3; round++) {
        keep_busy(60);
        size_t ok = tu_verify_words(w, WIPE_BYTES, 77 + round);
        printf("round %d: the host's buffer holds %s\n", round,
               ok == WIPE_BYTES ? "its bytes" : "other bytes");
        pid_t pid = fork();
        if (pid < 0)
            DIE("fork");
        if (pid == 0) {
            size_t zero = 0;
            while (zero < WIPE_BYTES && w[zero] == 0)
                zero++;
            _exit(zero == WIPE_BYTES ? 0 : 1);
        }
        int status = 0;
        CHECK(waitpid(pid, &status, 0) == pid, "waitpid");
        printf("round %d: a forked child's buffer is %s\n", round,
               WIFEXITED(status) && WEXITSTATUS(status) == 0 ? "zero" : "not zero");
        tu_fill_words(w, WIPE_BYTES, 78 + round);
    }
}

/* Makes every `clone` that a holder would be made with (no CLONE_VM, CLONE_PIDFD) fail
 * with ENOMEM, in every thread of the process (the shim's included): as a clone
 * refused for memory. */
static void refuse_holder_clones(void)
{
#if defined(__x86_64__)
#define TU_AUDIT_ARCH AUDIT_ARCH_X86_64
#elif defined(__aarch64__)
#define TU_AUDIT_ARCH AUDIT_ARCH_AARCH64
#else
#error "holder_host: no seccomp arch for this machine"
#endif
    struct sock_filter f[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, TU_AUDIT_ARCH, 1, 0),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_clone, 1, 0),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        /* The low 32 bits of the flags (little endian). */
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, args[0])),
        BPF_JUMP(BPF_JMP | BPF_JSET | BPF_K, CLONE_VM, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        BPF_JUMP(BPF_JMP | BPF_JSET | BPF_K, CLONE_PIDFD, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | ENOMEM),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog prog = {.len = sizeof f / sizeof f[0], .filter = f};
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
        DIE("PR_SET_NO_NEW_PRIVS: %s", tu_errno_name(errno));
    if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC, &prog) != 0)
        DIE("seccomp: %s", tu_errno_name(errno));
}

static void mode_refused(int undumpable)
{
    if (undumpable) {
        if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0)
            DIE("PR_SET_DUMPABLE: %s", tu_errno_name(errno));
    } else
        refuse_holder_clones();
    for (int round = 0; round < 3; round++) {
        keep_busy(60);
        long long v = memshadow_snapshot();
        /* Without the shim: ENOSYS; with it, a version (from shadows). */
        printf("round %d: snapshot %s\n", round, v > 0 || errno == ENOSYS ? "answered" : "failed");
        /* A forked child sees the memory as it was at the fork. */
        uint64_t sum = tu_fnv(TU_FNV_INIT, busy, BUSY_BYTES);
        pid_t pid = fork();
        if (pid < 0)
            DIE("fork");
        if (pid == 0)
            _exit(tu_fnv(TU_FNV_INIT, busy, BUSY_BYTES) == sum ? 3 : 4);
        int status = 0;
        CHECK(waitpid(pid, &status, 0) == pid, "waitpid");
        printf("round %d: child exited %d\n", round, WIFEXITED(status) ? WEXITSTATUS(status) : -1);
    }
}

#define SERVE_BYTES (64 * 4096)

/* Writes round `round`'s pattern into `buf` (`bytes`): a different subset of its pages
 * each round, partly. */
static void fill_round(unsigned char *buf, size_t bytes, int round)
{
    for (size_t page = 0; page < bytes / 4096; page++)
        if ((page + round) % 3 != 0)
            tu_fill_words(buf + page * 4096, 4096 / (1 + round % 2), round * 1000 + page);
}

/* Takes a snapshot with memshadow_snapshot(); its version. */
static long long snapshot_now(void)
{
    long long v = memshadow_snapshot();
    if (v < 0)
        DIE("snapshot failed: %s", errno == ENOSYS ? "ENOSYS" : tu_errno_name(errno));
    return v;
}

/* Prints serve's line for `buf` at version `v`: "V 0xADDR LEN CHECKSUM". */
static void print_version(long long v, const unsigned char *buf, size_t bytes)
{
    printf("%lld %p %zu %016llx\n", v, (const void *)buf, bytes,
           (unsigned long long)tu_fnv(TU_FNV_INIT, buf, bytes));
}

/* One round of serve and switch: round `round`'s pattern into `b`, a snapshot, its
 * line; the same for `w` (a MADV_WIPEONFORK buffer) at that snapshot when there is one. */
static void serve_round(unsigned char *b, unsigned char *w, int round)
{
    fill_round(b, SERVE_BYTES, round);
    if (w)
        fill_round(w, WIPE_BYTES, round);
    long long v = snapshot_now();
    print_version(v, b, SERVE_BYTES);
    if (w)
        print_version(v, w, WIPE_BYTES);
}

/* Says "ready" and waits for SIGUSR1, writing nothing. */
static void ready_then_wait(void)
{
    printf("ready\n");
    fflush(stdout);
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGUSR1);
    sigprocmask(SIG_BLOCK, &set, NULL);
    int sig;
    sigwait(&set, &sig);
}

static void mode_serve(void)
{
    unsigned char *b = malloc(SERVE_BYTES);
    unsigned char *w = wipe_buffer();
    if (!b)
        DIE("malloc");
    for (int round = 0; round < 6; round++)
        serve_round(b, NULL, round);
    printf("wipe %p %d\n", (void *)w, WIPE_BYTES);
    ready_then_wait();
}

#define SWITCH_BALLAST (128 << 20)

/* Sleeps `ms` milliseconds, writing nothing. */
static void quiet(int ms)
{
    struct timespec t = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&t, &t) != 0 && errno == EINTR)
        ;
}

#define SCATTER_BYTES (64 << 20)

/* Writes a byte of a random page of `buf` (SCATTER_BYTES) flat out for about `ms`
 * milliseconds: a different random set of pages every epoch, which no predictor foresees,
 * so on shadows nearly every first write traps. */
static void scatter_busy(unsigned char *buf, int ms)
{
    uint64_t x = 88172645463325252ULL;
    double end = now_s() + ms / 1000.0;
    while (now_s() < end) {
        for (int i = 0; i < 64; i++) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            buf[(x % (SCATTER_BYTES / 4096)) * 4096]++;
        }
    }
}

static void mode_switch(int with_wipe)
{
    unsigned char *w = with_wipe ? wipe_buffer() : NULL;
    unsigned char *b = malloc(SERVE_BYTES);
    /* Populated and never written again: a holder's clone copies its page tables (a
     * cost that outweighs the shim's own few page faults in a quiet epoch). */
    unsigned char *ballast = malloc(SWITCH_BALLAST);
    unsigned char *scattered = malloc(SCATTER_BYTES);
    if (!b || !ballast || !scattered)
        DIE("malloc");
    memset(ballast, 7, SWITCH_BALLAST);
    memset(scattered, 1, SCATTER_BYTES);
    for (int round = 0; round < 6; round++) {
        if (round % 2 == 0)
            scatter_busy(scattered, 700);
        else
            quiet(700);
        serve_round(b, w, round);
    }
    ready_then_wait();
}


#define KEEP_ROUNDS 6

static void mode_keep(void)
{
    unsigned char *b = malloc(SERVE_BYTES);
    unsigned char *w = wipe_buffer();
    /* A child has no mapping of it. */
    unsigned char *d = marked_buffer(MADV_DONTFORK, "MADV_DONTFORK", 91);
    if (!b)
        DIE("malloc");
    for (int round = 0; round < KEEP_ROUNDS; round++) {
        keep_busy(25);
        fill_round(b, SERVE_BYTES, round);
        fill_round(w, WIPE_BYTES, round + 1);
        fill_round(d, WIPE_BYTES, round + 2);
        long long v = snapshot_now();
        print_version(v, b, SERVE_BYTES);
        print_version(v, w, WIPE_BYTES);
        print_version(v, d, WIPE_BYTES);
    }
    ready_then_wait();
}

#define TOGGLE_SNAPSHOTS 30

static volatile int toggling = 1;

static void *toggle_wipe(void *arg)
{
    unsigned char *w = arg;
    while (toggling) {
        madvise(w, WIPE_BYTES, MADV_WIPEONFORK);
        madvise(w, WIPE_BYTES, MADV_KEEPONFORK);
    }
    return NULL;
}

static void mode_toggle(void)
{
    unsigned char *w = wipe_buffer();
    uint64_t sum = tu_fnv(TU_FNV_INIT, w, WIPE_BYTES);
    pthread_t t;
    if (pthread_create(&t, NULL, toggle_wipe, w) != 0)
        DIE("pthread_create");
    for (int i = 0; i < TOGGLE_SNAPSHOTS; i++) {
        long long v = snapshot_now();
        printf("%lld %p %d %016llx\n", v, (void *)w, WIPE_BYTES, (unsigned long long)sum);
        quiet(3);
    }
    toggling = 0;
    pthread_join(t, NULL);
    ready_then_wait();
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    const char *mode = argc > 1 ? argv[1] : "";
    /* A hang (a pipe that never reaches EOF, a wait that never returns) ends here. */
    alarm(strcmp(mode, "serve") == 0 || strcmp(mode, "switch") == 0 ||
                  strcmp(mode, "toggle") == 0 || strcmp(mode, "keep") == 0
              ? 0
              : 30);
    if (strcmp(mode, "pipe") == 0)
        mode_pipe();
    else if (strcmp(mode, "wait") == 0)
        mode_wait();
    else if (strcmp(mode, "forkexec") == 0)
        mode_forkexec();
    else if (strcmp(mode, "wipe") == 0)
        mode_wipe();
    else if (strcmp(mode, "refused") == 0)
        mode_refused(0);
    else if (strcmp(mode, "undumpable") == 0)
        mode_refused(1);
    else if (strcmp(mode, "switch") == 0) {
        mode_switch(argc > 2 && strcmp(argv[2], "wipe") == 0);
        return 0;
    } else if (strcmp(mode, "keep") == 0) {
        mode_keep();
        return 0;
    } else if (strcmp(mode, "toggle") == 0) {
        mode_toggle();
        return 0;
    } else if (strcmp(mode, "serve") == 0) {
        if (argc > 2 && strcmp(argv[2], "refused") == 0)
            refuse_holder_clones();
        mode_serve();
        return 0;
    } else
        DIE("usage: holder_host pipe|wait|forkexec|wipe|refused|undumpable|switch [wipe]|keep|toggle|serve [refused]");
    return tu_finish(mode, 0);
}
