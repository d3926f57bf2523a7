/* The flight recorder's test program (inspector/tests/flight.rs). A global pointer to a
 * linked list on the heap and a global counter: after push(s) the list is s, s-1, ..., 1
 * and counter is s.
 *
 * Usage: flight_crash MODE [NODES]
 *   segv N     sleeps 600 ms (the recorder's first, periodic, version is taken
 *              meanwhile), builds N nodes, then dereferences NULL: dies of SIGSEGV.
 *   abort N    the same, then abort(): dies of SIGABRT.
 *   fpe N      the same, then an integer division by zero: SIGFPE.
 *   ill N      the same, then an undefined instruction (__builtin_trap): SIGILL.
 *   bus N      the same, then a read of a file mapping past the file's end: SIGBUS.
 *   thread N   the same, with another thread writing 4 MiB of heap flat out meanwhile,
 *              then dereferences NULL: SIGSEGV while the other thread runs on.
 *   handler N  signal(SIGSEGV, h) (prints what it returned), checks that sigaction
 *              shows h, builds N nodes, then dereferences NULL: h prints "handled"
 *              and calls _exit(3).
 *   fork N     builds N nodes, forks; the child dereferences NULL, the parent prints
 *              how the child ended ("child SIGSEGV") and exits 0.
 *   query      prints "SIGSEGV=SIG_DFL" (or the handler) as sigaction reports it and
 *              the SigCgt line of /proc/self/status, then exits 0.
 *
 * The globals are page-aligned: past the executable's last file page, in anonymous
 * .bss, which memshadow versions (see core_list.c). */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

struct node {
    long value;
    struct node *next;
    char pad[200];
};

long counter __attribute__((aligned(4096)));
struct node *head __attribute__((aligned(4096)));

static void push(long s)
{
    struct node *n = malloc(sizeof *n);
    if (!n)
        abort();
    n->value = s;
    n->next = head;
    head = n;
    counter = s;
}

static void build(long nodes)
{
    usleep(600 * 1000);
    for (long s = 1; s <= nodes; s++)
        push(s);
    printf("built %ld\n", counter);
    fflush(stdout);
}

/* NULL, but the compiler cannot know it (a store through a known NULL is undefined
 * and optimised away). */
long *volatile nowhere;

static __attribute__((noinline)) void crash(void)
{
    long *p = nowhere;
    *p = counter;
}

volatile long zero;

static __attribute__((noinline)) long divide(void)
{
    return counter / zero;
}

/* A page of a file mapped, then the file cut to nothing: reading it is SIGBUS. */
static __attribute__((noinline)) long bus(void)
{
    FILE *f = tmpfile();
    if (!f || ftruncate(fileno(f), 4096) != 0)
        return -1;
    volatile long *p = mmap(NULL, 4096, PROT_READ, MAP_SHARED, fileno(f), 0);
    if (p == MAP_FAILED || ftruncate(fileno(f), 0) != 0)
        return -1;
    return *p;
}

static void *keep_writing(void *arg)
{
    volatile char *buf = arg;
    for (;;)
        for (long i = 0; i < (4L << 20); i += 4096)
            buf[i]++;
    return NULL;
}

static void handled(int sig)
{
    static const char msg[] = "handled\n";
    (void)sig;
    write(1, msg, sizeof msg - 1);
    _exit(3);
}

static void print_sigcgt(void)
{
    char line[256];
    FILE *f = fopen("/proc/self/status", "r");
    if (!f)
        return;
    while (fgets(line, sizeof line, f))
        if (strncmp(line, "SigCgt:", 7) == 0)
            fputs(line, stdout);
    fclose(f);
}

int main(int argc, char **argv)
{
    if (argc < 2)
        return 2;
    const char *mode = argv[1];
    long nodes = argc > 2 ? atol(argv[2]) : 0;
    if (strcmp(mode, "segv") == 0) {
        build(nodes);
        crash();
        return 1;
    }
    if (strcmp(mode, "abort") == 0) {
        build(nodes);
        abort();
    }
    if (strcmp(mode, "fpe") == 0) {
        build(nodes);
        printf("%ld\n", divide());
        return 1;
    }
    if (strcmp(mode, "ill") == 0) {
        build(nodes);
        __builtin_trap();
    }
    if (strcmp(mode, "bus") == 0) {
        build(nodes);
        printf("%ld\n", bus());
        return 1;
    }
    if (strcmp(mode, "thread") == 0) {
        build(nodes);
        char *buf = calloc(4, 1 << 20);
        pthread_t writer;
        if (!buf || pthread_create(&writer, NULL, keep_writing, buf) != 0)
            return 5;
        usleep(100 * 1000);
        crash();
        return 1;
    }
    if (strcmp(mode, "handler") == 0) {
        void (*old)(int) = signal(SIGSEGV, handled);
        printf("old=%s\n", old == SIG_DFL ? "SIG_DFL" : "other");
        struct sigaction now;
        if (sigaction(SIGSEGV, NULL, &now) != 0 || now.sa_handler != handled)
            return 4;
        build(nodes);
        crash();
        return 1;
    }
    if (strcmp(mode, "fork") == 0) {
        build(nodes);
        pid_t child = fork();
        if (child < 0)
            return 5;
        if (child == 0) {
            crash();
            _exit(1);
        }
        int status;
        if (waitpid(child, &status, 0) != child)
            return 6;
        printf("child %s\n", WIFSIGNALED(status) && WTERMSIG(status) == SIGSEGV ? "SIGSEGV" : "other");
        return 0;
    }
    if (strcmp(mode, "query") == 0) {
        struct sigaction now;
        if (sigaction(SIGSEGV, NULL, &now) != 0)
            return 4;
        printf("SIGSEGV=%s\n", now.sa_handler == SIG_DFL ? "SIG_DFL" : "other");
        print_sigcgt();
        return 0;
    }
    return 2;
}
