/* dlopen_lib: load libplugin.so (built next to this program by the harness, or named by
 * argv[1]) with dlopen, call into it, dlclose it, and load it again. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <libgen.h>
#include <stdint.h>
#include <unistd.h>

#include "testutil.h"

struct table;
typedef struct table *(*make_fn)(size_t);
typedef uint64_t (*sum_fn)(struct table *);
typedef uint64_t (*mapped_fn)(size_t);
typedef void (*free_fn)(struct table *);
typedef int (*ctor_ok_fn)(void);

static void *must_sym(void *h, const char *name)
{
    dlerror();
    void *s = dlsym(h, name);
    if (!s)
        DIE("dlsym %s: %s", name, dlerror());
    return s;
}

static void round_trip(const char *path, int round, int flags)
{
    void *h = dlopen(path, flags);
    if (!h)
        DIE("dlopen: %s", dlerror());
    make_fn make = (make_fn)must_sym(h, "plugin_make");
    sum_fn sum = (sum_fn)must_sym(h, "plugin_sum");
    mapped_fn mapped = (mapped_fn)must_sym(h, "plugin_mapped");
    free_fn release = (free_fn)must_sym(h, "plugin_free");
    ctor_ok_fn ctor_ok = (ctor_ok_fn)must_sym(h, "plugin_ctor_ok");

    size_t n = 20000 + (size_t)round * 1000;
    struct table *t = make(n);
    CHECK(t != NULL, "plugin_make");
    uint64_t s = t ? sum(t) : 0;
    uint64_t m = mapped(256);
    int c = ctor_ok();
    printf("round %d: plugin_make(%zu) sum %llu, plugin_mapped(256) %llu, constructor block %s\n", round, n,
           (unsigned long long)s, (unsigned long long)m, c ? "intact" : "BROKEN");
    CHECK(c, "constructor block");
    /* The expected values, computed here. */
    uint64_t want_m = 0;
    for (size_t i = 0; i < 256 * 4096; i++)
        want_m += (unsigned char)(i % 251);
    CHECK(m == want_m, "plugin_mapped: %llu != %llu", (unsigned long long)m, (unsigned long long)want_m);
    /* Our free must accept the plugin's blocks, and the plugin's free ours. */
    release(t);
    CHECK(dlclose(h) == 0, "dlclose: %s", dlerror());
}

int main(int argc, char **argv)
{
    char path[4096];
    if (argc > 1) {
        snprintf(path, sizeof path, "%s", argv[1]);
    } else {
        char exe[4096];
        ssize_t len = readlink("/proc/self/exe", exe, sizeof exe - 1);
        if (len <= 0)
            DIE("readlink");
        exe[len] = 0;
        snprintf(path, sizeof path, "%s/libplugin.so", dirname(exe));
    }
    printf("dlopen_lib\n");
    void *missing = dlopen("libmemshadow-test-does-not-exist.so", RTLD_NOW);
    printf("dlopen of a missing library: %s\n", missing ? "loaded?!" : "NULL");
    CHECK(missing == NULL, "missing library loaded");

    round_trip(path, 0, RTLD_NOW | RTLD_LOCAL);
    round_trip(path, 1, RTLD_LAZY | RTLD_GLOBAL);
    round_trip(path, 2, RTLD_NOW);
    return tu_finish("dlopen_lib", 0);
}
