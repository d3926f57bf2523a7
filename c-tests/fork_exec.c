/* fork_exec: fork + exec of /bin/echo, of `sh -c`, of this program itself with an
 * argument, an exec that fails, vfork, posix_spawn/posix_spawnp, popen and system.
 * The parent waits for each child before printing again, so the output order is fixed.
 * Exits with status 5 on success. */
#define _GNU_SOURCE
#include <spawn.h>
#include <stdint.h>
#include <sys/wait.h>
#include <unistd.h>

#include "testutil.h"

extern char **environ;

static char self[4096];

static int wait_for(pid_t pid)
{
    int status = 0;
    while (waitpid(pid, &status, 0) < 0)
        if (errno != EINTR)
            DIE("waitpid: %s", tu_errno_name(errno));
    return status;
}

static void report(const char *what, int st, int want_exit)
{
    if (WIFEXITED(st))
        printf("%s: exit %d\n", what, WEXITSTATUS(st));
    else if (WIFSIGNALED(st))
        printf("%s: killed by signal %d\n", what, WTERMSIG(st));
    fflush(stdout);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == want_exit, "%s: expected exit %d", what, want_exit);
}

/* What this program does when started by itself as a child. */
static int child_mode(int argc, char **argv)
{
    int n = argc > 2 ? atoi(argv[2]) : 0;
    size_t total = 0;
    for (int i = 0; i < 200; i++) {
        size_t sz = 64 + (size_t)i * 997;
        unsigned char *p = malloc(sz);
        tu_fill(p, sz, (uint64_t)(n * 1000 + i));
        if (tu_verify(p, sz, (uint64_t)(n * 1000 + i)) != sz) {
            printf("FAIL self child %d: pattern\n", n);
            return 1;
        }
        total += sz;
        free(p);
    }
    if (argc > 3 && strcmp(argv[3], "exec-echo") == 0) {
        /* Replace this (shimmed) process image by another program. */
        printf("self child %d: %zu bytes checked, now exec echo\n", n, total);
        fflush(stdout);
        execl("/bin/echo", "echo", "echo after exec from a child", (char *)NULL);
        printf("FAIL exec: %s\n", tu_errno_name(errno));
        return 1;
    }
    printf("self child %d: %zu bytes checked\n", n, total);
    return 30 + n;
}

static pid_t fork_exec(const char *path, char *const argv[], char *const envp[])
{
    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0)
        DIE("fork");
    if (pid == 0) {
        if (envp)
            execve(path, argv, envp);
        else
            execv(path, argv);
        printf("exec of %s failed: %s\n", path, tu_errno_name(errno));
        fflush(stdout);
        _exit(127);
    }
    return pid;
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "child") == 0)
        return child_mode(argc, argv);

    ssize_t len = readlink("/proc/self/exe", self, sizeof self - 1);
    if (len <= 0)
        DIE("readlink /proc/self/exe");
    self[len] = 0;
    printf("fork_exec\n");

    char *echo_argv[] = {"echo", "hello from echo", NULL};
    report("fork+exec /bin/echo", wait_for(fork_exec("/bin/echo", echo_argv, NULL)), 0);

    char *sh_argv[] = {"sh", "-c", "echo from sh; x=$(echo nested); echo $x; exit 7", NULL};
    report("fork+exec sh -c", wait_for(fork_exec("/bin/sh", sh_argv, NULL)), 7);

    char *self_argv[] = {self, "child", "1", NULL};
    report("fork+exec self child 1", wait_for(fork_exec(self, self_argv, NULL)), 31);

    char *chain_argv[] = {self, "child", "2", "exec-echo", NULL};
    report("fork+exec self child 2 then echo", wait_for(fork_exec(self, chain_argv, NULL)), 0);

    char *clean_env[] = {"PATH=/usr/bin:/bin", "LC_ALL=C", NULL};
    char *env_argv[] = {"sh", "-c", "echo with a clean environment; exit 8", NULL};
    report("exec with an environment of its own", wait_for(fork_exec("/bin/sh", env_argv, clean_env)), 8);

    char *bad_argv[] = {"nonexistent", NULL};
    report("exec of a missing program", wait_for(fork_exec("/nonexistent/program", bad_argv, NULL)), 127);

    /* vfork + exec */
    fflush(stdout);
    pid_t v = vfork();
    if (v == 0) {
        execl("/bin/echo", "echo", "hello from vfork", (char *)NULL);
        _exit(127);
    }
    report("vfork+exec /bin/echo", wait_for(v), 0);

    /* posix_spawn and posix_spawnp */
    pid_t sp;
    char *spawn_echo[] = {"echo", "hello from posix_spawn", NULL};
    fflush(stdout);
    int rc = posix_spawn(&sp, "/bin/echo", NULL, NULL, spawn_echo, environ);
    CHECK(rc == 0, "posix_spawn echo: %s", tu_errno_name(rc));
    if (rc == 0)
        report("posix_spawn /bin/echo", wait_for(sp), 0);

    char *spawn_sh[] = {"sh", "-c", "printf '%s\\n' spawned-sh; exit 9", NULL};
    fflush(stdout);
    rc = posix_spawnp(&sp, "sh", NULL, NULL, spawn_sh, environ);
    CHECK(rc == 0, "posix_spawnp sh: %s", tu_errno_name(rc));
    if (rc == 0)
        report("posix_spawnp sh", wait_for(sp), 9);

    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", 0, 0);
    char *spawn_self[] = {self, "child", "3", NULL};
    fflush(stdout);
    rc = posix_spawn(&sp, self, &fa, NULL, spawn_self, environ);
    posix_spawn_file_actions_destroy(&fa);
    CHECK(rc == 0, "posix_spawn self: %s", tu_errno_name(rc));
    if (rc == 0)
        report("posix_spawn self child 3", wait_for(sp), 33);

    char *spawn_bad[] = {"nonexistent", NULL};
    rc = posix_spawn(&sp, "/nonexistent/program", NULL, NULL, spawn_bad, environ);
    if (rc == 0) {
        /* Older libcs report the failure through the child's exit status. */
        int st = wait_for(sp);
        rc = WIFEXITED(st) && WEXITSTATUS(st) == 127 ? ENOENT : -1;
    }
    printf("posix_spawn of a missing program: %s\n", tu_errno_name(rc));

    /* popen: read a child's output through a pipe. */
    fflush(stdout);
    FILE *p = popen("echo popen line one; echo popen line two; seq 1 1000", "r");
    if (!p)
        DIE("popen");
    char line[256];
    int lines = 0;
    uint64_t h = TU_FNV_INIT;
    while (fgets(line, sizeof line, p)) {
        if (lines < 2)
            printf("popen read: %s", line);
        h = tu_fnv(h, line, strlen(line));
        lines++;
    }
    int st = pclose(p);
    printf("popen: %d lines, checksum %016llx\n", lines, (unsigned long long)h);
    report("pclose", st, 0);

    fflush(stdout);
    report("system(\"exit 3\")", system("exit 3"), 3);
    report("system(\"echo from system\")", system("echo from system"), 0);

    return tu_finish("fork_exec", 5);
}
