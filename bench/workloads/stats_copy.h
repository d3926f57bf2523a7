/* Copying the shim's stats page at a chosen point of a run, for the bench to read the
 * counters there (shared by workload.h and snapshot_costs.c). */
#ifndef MEMSHADOW_BENCH_STATS_COPY_H
#define MEMSHADOW_BENCH_STATS_COPY_H

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

/* Copies the shim's stats page ($MEMSHADOW_DIR/PID.stats) to $DIR_ENV/LABEL.stats, where
 * DIR_ENV names an environment variable, if both are set and the shim is there. Returns
 * 0 when it copied or had nothing to do, -1 on a read or write error. */
static int copy_stats_page(const char *dir_env, const char *label)
{
    const char *out = getenv(dir_env);
    const char *dir = getenv("MEMSHADOW_DIR");
    if (!out || !dir)
        return 0;
    char src[4096], dst[4096], buf[16384];
    snprintf(src, sizeof src, "%s/%d.stats", dir, (int)getpid());
    snprintf(dst, sizeof dst, "%s/%s.stats", out, label);
    int in = open(src, O_RDONLY | O_CLOEXEC);
    if (in < 0)
        return 0; /* not under the shim */
    ssize_t n = read(in, buf, sizeof buf);
    close(in);
    if (n <= 0)
        return -1;
    int fd = open(dst, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        return -1;
    int ok = write(fd, buf, (size_t)n) == n;
    close(fd);
    return ok ? 0 : -1;
}

#endif
