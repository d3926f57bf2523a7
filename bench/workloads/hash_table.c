/* hash_table: a chained hash table of malloc'd 64-byte nodes (key, 48 bytes of value)
 * under a mix of inserts, deletes and lookups, keeping about M MiB live (nodes as
 * malloc chunks of 80 bytes, plus the bucket array).
 * Keys are drawn uniformly from 0..2N-1 where N is the number of nodes that fit; the
 * table starts with about half of them (N nodes). Each operation picks a key and:
 * 1/4 insert (a new node when absent, else the value is overwritten), 1/4 delete (the
 * node is unlinked and freed when present), 1/2 lookup (the value is read). Inserts and
 * deletes balance at half of the keys present, so the table stays at about N nodes.
 * The fork child walks the table and writes every node's key and value.
 * Usage: hash_table --mib M --seconds S [--fork-every-ms T] [--seed X]
 * (protocol and output: workload.h) */
#include <stddef.h>

#include "workload.h"

#define BATCH_OPS 4096
#define NODE_CHUNK 80 /* what glibc takes for a 64-byte block */

struct node {
    struct node *next;
    uint64_t key;
    uint64_t val[6];
};

static struct {
    struct node **buckets;
    uint64_t mask;     /* buckets - 1 */
    uint64_t keys;     /* key space */
    uint64_t salt;
    uint64_t live;     /* nodes in the table */
    uint64_t inserts, deletes, lookup_sum;
    uint64_t rng;
} s;

static inline struct node **bucket_of(uint64_t key)
{
    return &s.buckets[wl_splitmix64(key ^ s.salt) & s.mask];
}

static inline void fill(struct node *n, uint64_t key, uint64_t x)
{
    n->key = key;
    for (int j = 0; j < 6; j++) n->val[j] = x + (uint64_t)j;
}

static inline void insert(uint64_t key, uint64_t x)
{
    struct node **b = bucket_of(key);
    for (struct node *n = *b; n; n = n->next) {
        if (n->key == key) {
            fill(n, key, x);
            return;
        }
    }
    struct node *n = malloc(sizeof *n);
    if (!n) wl_die("malloc");
    fill(n, key, x);
    n->next = *b;
    *b = n;
    s.live++;
    s.inserts++;
}

static void batch(void *ctx, int tid, uint64_t elapsed_ns)
{
    (void)ctx;
    (void)tid;
    (void)elapsed_ns;
    uint64_t rng = s.rng, sum = s.lookup_sum;
    for (int i = 0; i < BATCH_OPS; i++) {
        uint64_t r = wl_rand(&rng);
        uint64_t key = wl_below(r, s.keys);
        switch (r & 3) {
        case 0:
            insert(key, r);
            break;
        case 1: {
            struct node **p = bucket_of(key);
            for (struct node *n = *p; n; p = &n->next, n = n->next) {
                if (n->key == key) {
                    *p = n->next;
                    free(n);
                    s.live--;
                    s.deletes++;
                    break;
                }
            }
            break;
        }
        default:
            for (struct node *n = *bucket_of(key); n; n = n->next) {
                if (n->key == key) {
                    sum += n->val[0];
                    break;
                }
            }
        }
    }
    s.rng = rng;
    s.lookup_sum = sum;
}

static void dump(void *ctx)
{
    (void)ctx;
    for (uint64_t b = 0; b <= s.mask; b++)
        for (struct node *n = s.buckets[b]; n; n = n->next)
            wl_dump_bytes(&n->key, sizeof *n - offsetof(struct node, key));
}

int main(int argc, char **argv)
{
    struct wl_opts o = wl_parse(argc, argv, "hash_table", 1, 1);
    size_t bytes = o.mib * WL_MiB;
    /* buckets: a power of two near the node count (load factor 0.5 to 1) */
    uint64_t nb = 1;
    while (nb * 2 <= bytes / (NODE_CHUNK + sizeof(void *))) nb *= 2;
    uint64_t nodes = (bytes - nb * sizeof(void *)) / NODE_CHUNK;
    if (nodes < 1) nodes = 1;
    s.mask = nb - 1;
    s.keys = 2 * nodes;
    s.salt = wl_splitmix64(o.seed ^ 0x68617368ULL);
    s.buckets = wl_alloc(nb * sizeof(void *));
    memset(s.buckets, 0, nb * sizeof(void *));
    for (uint64_t k = 0; k < s.keys; k++)
        if (wl_splitmix64(k ^ o.seed) & 1) insert(k, wl_splitmix64(k));
    s.inserts = 0;
    s.rng = wl_rng_seed(o.seed, 0);
    wl_set_dumper(dump, NULL);
    wl_run(&o, BATCH_OPS, batch, NULL);
    uint64_t sum = 0;
    for (uint64_t b = 0; b <= s.mask; b++)
        for (struct node *n = s.buckets[b]; n; n = n->next)
            sum += wl_splitmix64(n->key ^ wl_splitmix64(n->val[0] ^ n->val[5]));
    wl_report(wl_splitmix64(sum ^ wl_splitmix64(s.live ^ wl_splitmix64(s.lookup_sum))));
    return 0;
}
