/* stray_close [stray|raw]: a program that closes descriptors it does not own, then
 * moves data through pipes, while snapshots are taken.
 *
 * stray (default): closes every descriptor number from 3 to 1023 it did not open, the
 *   way bash closes a pipe descriptor a second time after a pipeline and daemons close
 *   everything (close, close_range, closefrom, dup2/dup3 onto numbers), and then sends
 *   200,000 numbered records through a pipe from one thread to another. If the shim's
 *   own descriptors (its userfaultfd, its wake-up pipe) were closed by this and the pipe
 *   took their numbers, the shim would read the program's records: a record would be
 *   missing.
 * raw: closes the shim's userfaultfd with a raw system call (found in /proc/self/fd, as
 *   a program closing "everything" with syscall(SYS_close_range) would), and puts the
 *   read end of the records' pipe on that number with a raw dup3: the shim must notice,
 *   stop snapshots (one memshadow: line on stderr) and never read from that number.
 *   Natively there is no such descriptor and the pipe keeps its own number.
 *
 * Both print the records' count and checksum and "stray_close: ok". Under the shim a
 * snapshot is taken first (C API) so that the engine's descriptors exist.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <fcntl.h>
#include <pthread.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "memshadow.h"
#include "testutil.h"

#define RECORDS 200000

struct transfer {
    int rd, wr;
};

static void *writer(void *arg)
{
    struct transfer *t = arg;
    uint32_t buf[64];
    uint32_t next = 0;
    while (next < RECORDS) {
        int n = 0;
        while (n < 64 && next < RECORDS)
            buf[n++] = next++;
        /* Paced, so the transfer lasts long enough for snapshots and the shim's
         * threads to run while the pipe is in use. */
        if (next % 1024 == 0)
            usleep(2000);
        size_t left = n * sizeof(uint32_t);
        char *p = (char *)buf;
        while (left > 0) {
            ssize_t w = write(t->wr, p, left);
            if (w < 0 && errno == EINTR)
                continue;
            if (w <= 0)
                DIE("write to the pipe: %s", tu_errno_name(errno));
            p += w;
            left -= w;
        }
    }
    close(t->wr);
    return NULL;
}

/* Sends RECORDS records from a writer thread to this one; checks their order. The
 * heap buffer they land in is written by the kernel (read(2)) while snapshots run. */
static void transfer(int rd, int wr)
{
    struct transfer t = {rd, wr};
    pthread_t th;
    if (pthread_create(&th, NULL, writer, &t) != 0)
        DIE("pthread_create");
    uint32_t *buf = malloc(64 * 1024);
    uint32_t expect = 0;
    uint64_t sum = 0;
    size_t have = 0; /* bytes of a partial record carried over */
    for (;;) {
        ssize_t n = read(rd, (char *)buf + have, 64 * 1024 - have);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            DIE("read from the pipe: %s", tu_errno_name(errno));
        if (n == 0)
            break;
        have += n;
        size_t whole = have / sizeof(uint32_t);
        for (size_t i = 0; i < whole; i++) {
            if (buf[i] != expect)
                DIE("record %u arrived where %u was expected: the pipe lost data",
                    buf[i], expect);
            sum += buf[i];
            expect++;
        }
        have -= whole * sizeof(uint32_t);
        memmove(buf, (char *)buf + whole * sizeof(uint32_t), have);
    }
    pthread_join(th, NULL);
    close(rd);
    free(buf);
    CHECK(expect == RECORDS, "%u records arrived of %d", expect, RECORDS);
    printf("records: %u, sum %llu\n", expect, (unsigned long long)sum);
}

static int is_open(int fd)
{
    return fcntl(fd, F_GETFD) != -1;
}

/* What a careless program does with numbers it does not own. */
static void stray_closes(void)
{
    /* bash: a pipe, closed, then closed again after its numbers were reused. */
    for (int round = 0; round < 100; round++) {
        int p[2];
        if (pipe(p) != 0)
            DIE("pipe");
        close(p[0]);
        close(p[1]);
        close(p[0]);
        close(p[1]);
    }
    for (int fd = 3; fd < 1024; fd++)
        close(fd);
    /* The ranges once more, as daemons and subprocess launchers do. */
    close_range(3, ~0U, 0);
    closefrom(3);
    int spare = dup(1);
    CHECK(spare >= 3, "dup");
    close(spare);
}

/* The descriptor number whose /proc/self/fd link is an anonymous userfaultfd, or -1. */
static int find_userfaultfd(void)
{
    DIR *d = opendir("/proc/self/fd");
    if (!d)
        DIE("opendir /proc/self/fd");
    int found = -1;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        char path[300], link[64];
        snprintf(path, sizeof path, "/proc/self/fd/%s", e->d_name);
        ssize_t n = readlink(path, link, sizeof link - 1);
        if (n <= 0)
            continue;
        link[n] = 0;
        if (strcmp(link, "anon_inode:[userfaultfd]") == 0)
            found = atoi(e->d_name);
    }
    closedir(d);
    return found;
}

int main(int argc, char **argv)
{
    const char *mode = argc > 1 ? argv[1] : "stray";
    setvbuf(stdout, NULL, _IONBF, 0);
    long long v = memshadow_snapshot(); /* -1 natively */
    (void)v;
    int p[2];
    if (strcmp(mode, "stray") == 0) {
        /* After the stray closes the pipe takes the lowest numbers; placeholders shift
         * it one number up each round, so it lands on each of 3 to 6 in turn. */
        for (int shift = 0; shift < 4; shift++) {
            stray_closes();
            for (int i = 0; i < shift; i++)
                if (open("/dev/null", O_RDONLY) < 0)
                    DIE("open /dev/null");
            if (pipe(p) != 0)
                DIE("pipe");
            /* A forked child must find the pipe open, as bash's child does before it
             * moves the pipe to its standard input. */
            pid_t child = fork();
            if (child < 0)
                DIE("fork");
            if (child == 0)
                _exit(is_open(p[0]) && is_open(p[1]) && dup2(p[0], 0) == 0 ? 0 : 1);
            int status = 0;
            if (waitpid(child, &status, 0) != child)
                DIE("waitpid");
            CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0,
                  "round %d: the child did not find the pipe open", shift);
            transfer(p[0], p[1]);
        }
    } else if (strcmp(mode, "raw") == 0) {
        if (pipe(p) != 0)
            DIE("pipe");
        int u = find_userfaultfd();
        if (u >= 0) {
            /* Raw calls, which no interposer sees: the number becomes the pipe's. */
            syscall(SYS_close, u);
            if (syscall(SYS_dup3, p[0], u, O_CLOEXEC) != u)
                DIE("dup3 onto %d: %s", u, tu_errno_name(errno));
            close(p[0]);
            p[0] = u;
        }
        CHECK(is_open(p[0]), "the pipe's read end is open");
        transfer(p[0], p[1]);
        /* Memory keeps being written after the snapshots stopped. */
        char *block = malloc(8 << 20);
        for (int i = 0; i < 8 << 20; i += 4096)
            block[i] = (char)i;
        free(block);
        v = memshadow_snapshot();
        (void)v;
    } else {
        DIE("unknown mode %s", mode);
    }
    printf("stray_close: ok\n");
    return tu_failures ? 1 : 0;
}
