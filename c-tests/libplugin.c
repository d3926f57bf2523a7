/* libplugin: a shared library loaded with dlopen by dlopen_lib. It allocates in its
 * constructor, in its functions (malloc, strdup, mmap, a thread) and frees in its
 * destructor. Built by the test harness with -shared -fPIC. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

struct table {
    size_t n;
    char **names;
    uint64_t *values;
};

static char *ctor_block;
static size_t ctor_len;

__attribute__((constructor)) static void plugin_init(void)
{
    ctor_len = 10000;
    ctor_block = malloc(ctor_len);
    if (ctor_block)
        memset(ctor_block, 'c', ctor_len);
}

__attribute__((destructor)) static void plugin_fini(void)
{
    free(ctor_block);
    ctor_block = NULL;
}

/* 1 when the constructor's block is still intact. */
int plugin_ctor_ok(void)
{
    if (!ctor_block)
        return 0;
    for (size_t i = 0; i < ctor_len; i++)
        if (ctor_block[i] != 'c')
            return 0;
    return 1;
}

struct table *plugin_make(size_t n)
{
    struct table *t = calloc(1, sizeof *t);
    if (!t)
        return NULL;
    t->n = n;
    t->names = malloc(n * sizeof *t->names);
    t->values = calloc(n, sizeof *t->values);
    if (!t->names || !t->values)
        return NULL;
    char buf[64];
    for (size_t i = 0; i < n; i++) {
        int len = 0;
        size_t v = i * 2654435761u;
        buf[len++] = 'k';
        do {
            buf[len++] = (char)('0' + v % 10);
            v /= 10;
        } while (v && len < 40);
        buf[len] = 0;
        t->names[i] = strdup(buf);
        t->values[i] = i * i + 7;
    }
    return t;
}

static void *thread_sum(void *arg)
{
    struct table *t = arg;
    uint64_t *s = malloc(sizeof *s);
    *s = 0;
    for (size_t i = 0; i < t->n; i++)
        *s += t->values[i] + (uint64_t)strlen(t->names[i]);
    return s;
}

/* Sum of values and name lengths, computed on a thread the plugin starts. */
uint64_t plugin_sum(struct table *t)
{
    pthread_t th;
    void *r = NULL;
    if (pthread_create(&th, NULL, thread_sum, t) != 0)
        return 0;
    pthread_join(th, &r);
    uint64_t s = *(uint64_t *)r;
    free(r);
    return s;
}

/* Fill an anonymous mapping, grow it with mremap, and checksum it. */
uint64_t plugin_mapped(size_t pages)
{
    size_t n = pages * 4096;
    unsigned char *m = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED)
        return 0;
    for (size_t i = 0; i < n; i++)
        m[i] = (unsigned char)(i % 251);
    unsigned char *g = mremap(m, n, 2 * n, MREMAP_MAYMOVE);
    if (g == MAP_FAILED) {
        munmap(m, n);
        return 0;
    }
    uint64_t s = 0;
    for (size_t i = 0; i < 2 * n; i++)
        s += g[i];
    munmap(g, 2 * n);
    return s;
}

void plugin_free(struct table *t)
{
    if (!t)
        return;
    for (size_t i = 0; i < t->n; i++)
        free(t->names[i]);
    free(t->names);
    free(t->values);
    free(t);
}
