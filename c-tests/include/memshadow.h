/* memshadow.h: ask libmemshadow.so for a snapshot from inside a program.
 *
 * Opt-in and header-only. A program built with it runs unchanged without the shim:
 * the shim's entry point is looked up at run time, so there is nothing to link
 * against (glibc 2.34 and later have dlsym in libc; with an older glibc, link with
 * -ldl).
 *
 *     #include <memshadow.h>
 *
 *     long long v = memshadow_snapshot();
 *     if (v < 0)
 *         perror("memshadow_snapshot");   // ENOSYS: not running under memshadow
 *     else
 *         printf("snapshot %lld\n", v);   // memshadow read PID --version v ADDR LEN
 *
 * long long memshadow_snapshot(void)
 *
 *     Takes a snapshot of the calling process's tracked memory (heap, malloc's arenas,
 *     anonymous mappings, .bss) and returns its version, 1 or more, increasing with
 *     every snapshot of the process (also those asked for from outside with
 *     `memshadow snapshot PID`). It returns once the snapshot has been taken: the
 *     version holds every write the calling thread made before the call and none it
 *     makes after. Writes other threads make meanwhile are either wholly in it or not,
 *     as at one instant: the snapshot is a state the memory really had.
 *
 *     On failure it returns -1 and sets errno:
 *       ENOSYS  the shim is not loaded (the program was not started with
 *               LD_PRELOAD=libmemshadow.so or `memshadow run`), or it cannot take
 *               snapshots in this process (e.g. userfaultfd is not available; the shim
 *               says why on stderr);
 *       other   as set by the shim.
 *
 *     Only the most recent versions stay readable (MEMSHADOW_MAX_VERSIONS, default 4).
 *     Safe to call from any thread; not async-signal-safe.
 *
 * The shim exports the entry point as `long long memshadow_snapshot_v1(void)`; the
 * suffix is its ABI version. Call it through this header rather than by name, so that
 * the program still links and runs without the shim.
 */
#ifndef MEMSHADOW_H
#define MEMSHADOW_H

#include <dlfcn.h>
#include <errno.h>

#ifdef __cplusplus
extern "C" {
#endif

/* RTLD_DEFAULT needs _GNU_SOURCE with glibc; its value is 0 (glibc and musl). */
#ifdef RTLD_DEFAULT
#define MEMSHADOW_RTLD_DEFAULT_ RTLD_DEFAULT
#else
#define MEMSHADOW_RTLD_DEFAULT_ ((void *)0)
#endif

typedef long long (*memshadow_snapshot_fn_)(void);

/* The shim's entry point, or NULL without the shim. Looked up once per translation
 * unit; concurrent first calls may each look it up, with the same result. */
static inline memshadow_snapshot_fn_ memshadow_lookup_(void)
{
    static memshadow_snapshot_fn_ fn;
    static int looked_up;
    if (__atomic_load_n(&looked_up, __ATOMIC_ACQUIRE))
        return __atomic_load_n(&fn, __ATOMIC_RELAXED);
    int saved = errno;
    void *sym = dlsym(MEMSHADOW_RTLD_DEFAULT_, "memshadow_snapshot_v1");
    errno = saved;
    memshadow_snapshot_fn_ found;
    __builtin_memcpy(&found, &sym, sizeof found); /* object to function pointer */
    __atomic_store_n(&fn, found, __ATOMIC_RELAXED);
    __atomic_store_n(&looked_up, 1, __ATOMIC_RELEASE);
    return found;
}

/* Takes a snapshot; returns its version (>= 1), or -1 with errno set (ENOSYS without
 * the shim). See the top of this file. */
static inline long long memshadow_snapshot(void)
{
    memshadow_snapshot_fn_ fn = memshadow_lookup_();
    if (!fn) {
        errno = ENOSYS;
        return -1;
    }
    return fn();
}

#ifdef __cplusplus
}
#endif

#endif
