/* Helpers shared by the memshadow C test programs.
 *
 * Every program prints deterministic output (no addresses, no timings, no
 * scheduling-dependent order), checks its own results, prints a line starting
 * "FAIL" for every broken check and exits non-zero when anything failed.
 */
#ifndef MEMSHADOW_TESTUTIL_H
#define MEMSHADOW_TESTUTIL_H

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int tu_failures;

#define FAIL(...)                                                              \
    do {                                                                       \
        printf("FAIL %s:%d: ", __FILE__, __LINE__);                            \
        printf(__VA_ARGS__);                                                   \
        printf("\n");                                                          \
        fflush(stdout);                                                        \
        if (++tu_failures >= 50) {                                             \
            printf("too many failures, giving up\n");                          \
            exit(1);                                                           \
        }                                                                      \
    } while (0)

#define CHECK(cond, ...)                                                       \
    do {                                                                       \
        if (!(cond))                                                           \
            FAIL(__VA_ARGS__);                                                 \
    } while (0)

/* Abort the program at once: for failures after which nothing else makes sense. */
#define DIE(...)                                                               \
    do {                                                                       \
        FAIL(__VA_ARGS__);                                                     \
        exit(1);                                                               \
    } while (0)

static inline const char *tu_errno_name(int e)
{
    switch (e) {
    case 0: return "0";
    case ENOMEM: return "ENOMEM";
    case EINVAL: return "EINVAL";
    case EFAULT: return "EFAULT";
    case EAGAIN: return "EAGAIN";
    case EPERM: return "EPERM";
    case EBADF: return "EBADF";
    case ENOENT: return "ENOENT";
    case EEXIST: return "EEXIST";
    case EOVERFLOW: return "EOVERFLOW";
    default: return "E?";
    }
}

/* splitmix64: a small deterministic generator. */
static inline uint64_t tu_next(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* The byte at offset i of a block identified by seed. */
static inline unsigned char tu_byte(uint64_t seed, size_t i)
{
    uint64_t x = seed * 0x100000001b3ULL + (uint64_t)i * 0x9e3779b1ULL;
    return (unsigned char)(x ^ (x >> 13) ^ (x >> 29));
}

static inline void tu_fill(void *p, size_t n, uint64_t seed)
{
    unsigned char *b = p;
    for (size_t i = 0; i < n; i++)
        b[i] = tu_byte(seed, i);
}

/* Returns the first offset that does not hold the pattern, or n when all do. */
static inline size_t tu_verify(const void *p, size_t n, uint64_t seed)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++)
        if (b[i] != tu_byte(seed, i))
            return i;
    return n;
}

/* Word-sized pattern for large buffers: fast to write and check. */
static inline uint64_t tu_word(uint64_t seed, size_t i)
{
    uint64_t x = seed ^ ((uint64_t)i * 0x9e3779b97f4a7c15ULL);
    return x ^ (x >> 31);
}

static inline void tu_fill_words(void *p, size_t bytes, uint64_t seed)
{
    uint64_t *w = p;
    for (size_t i = 0; i < bytes / 8; i++)
        w[i] = tu_word(seed, i);
}

static inline size_t tu_verify_words(const void *p, size_t bytes, uint64_t seed)
{
    const uint64_t *w = p;
    for (size_t i = 0; i < bytes / 8; i++)
        if (w[i] != tu_word(seed, i))
            return i * 8;
    return bytes;
}

/* FNV-1a over a buffer, continuing from h. */
static inline uint64_t tu_fnv(uint64_t h, const void *p, size_t n)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++) {
        h ^= b[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}
#define TU_FNV_INIT 0xcbf29ce484222325ULL

/* Print the verdict and return the exit status: ok_code when nothing failed, 1 otherwise. */
static inline int tu_finish(const char *prog, int ok_code)
{
    if (tu_failures) {
        printf("%s: %d FAILED\n", prog, tu_failures);
        fflush(stdout);
        return 1;
    }
    printf("%s: ok\n", prog);
    fflush(stdout);
    return ok_code;
}

#endif
