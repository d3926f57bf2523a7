/* zipf_updates: a key-value array of 64-byte values filling the buffer (one slot per
 * key, n = M MiB / 64 keys), each key hashed to a slot (splitmix64, so keys of
 * neighbouring rank land far apart, and as in any hashed store a few slots serve two
 * keys and some none). Each operation picks a key with zipf(0.99) popularity (rank 0
 * most popular) and overwrites its value: a version (the operation's sequence number)
 * and 56 bytes of payload, one whole cache line written, nothing read (a SET).
 * The sampler: the 16384 most popular ranks and "the tail" as one more outcome are drawn
 * from an alias table (exact weights), the tail by rejection-inversion (Hoermann and
 * Derflinger 1996, as in Apache Commons RNG) over the remaining ranks. The harness
 * links without -lm, so exp and log are computed here (errors around 1e-15).
 * Usage: zipf_updates --mib M --seconds S [--fork-every-ms T] [--seed X]
 * (protocol and output: workload.h) */
#include "workload.h"

#define BATCH_OPS 16384
#define THETA 0.99

struct value {
    uint64_t version;
    uint64_t payload[7];
};

/* ---- exp and log without libm ---- */

static const double LN2_HI = 6.93147180369123816490e-01, LN2_LO = 1.90821492927058770002e-10;
static const double LN2 = 0.69314718055994530942, LOG2E = 1.44269504088896340736;

static inline double bits_to_double(uint64_t u)
{
    double d;
    memcpy(&d, &u, sizeof d);
    return d;
}

static inline uint64_t double_to_bits(double d)
{
    uint64_t u;
    memcpy(&u, &d, sizeof u);
    return u;
}

static inline double my_exp(double x)
{
    if (x < -700.0) return 0.0;
    if (x > 700.0) x = 700.0;
    double kf = x * LOG2E;
    int64_t k = (int64_t)(kf < 0 ? kf - 0.5 : kf + 0.5);
    double r = (x - (double)k * LN2_HI) - (double)k * LN2_LO; /* |r| <= 0.347 */
    /* Taylor to r^13/13!: the next term is below 5e-18 */
    double p = 1.0 / 6227020800.0;
    p = p * r + 1.0 / 479001600.0;
    p = p * r + 1.0 / 39916800.0;
    p = p * r + 1.0 / 3628800.0;
    p = p * r + 1.0 / 362880.0;
    p = p * r + 1.0 / 40320.0;
    p = p * r + 1.0 / 5040.0;
    p = p * r + 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    p = p * r + 1.0;
    p = p * r + 1.0;
    return p * bits_to_double((uint64_t)(k + 1023) << 52);
}

/* x > 0 and normal */
static inline double my_log(double x)
{
    uint64_t u = double_to_bits(x);
    int e = (int)((u >> 52) & 0x7ff) - 1023;
    double m = bits_to_double((u & 0x000fffffffffffffULL) | 0x3ff0000000000000ULL);
    if (m > 1.41421356237309504880) {
        m *= 0.5;
        e++;
    }
    double t = (m - 1.0) / (m + 1.0); /* |t| <= 0.1716, log m = 2 atanh t */
    double t2 = t * t;
    double p = 1.0 / 21;
    p = p * t2 + 1.0 / 19;
    p = p * t2 + 1.0 / 17;
    p = p * t2 + 1.0 / 15;
    p = p * t2 + 1.0 / 13;
    p = p * t2 + 1.0 / 11;
    p = p * t2 + 1.0 / 9;
    p = p * t2 + 1.0 / 7;
    p = p * t2 + 1.0 / 5;
    p = p * t2 + 1.0 / 3;
    p = p * t2 + 1.0;
    return (double)e * LN2 + 2.0 * t * p;
}

/* log1p(x) / x */
static inline double helper1(double x)
{
    if (x > -1e-4 && x < 1e-4) return 1.0 - x * (0.5 - x * (1.0 / 3.0 - x * 0.25));
    return my_log(1.0 + x) / x;
}

/* expm1(x) / x */
static inline double helper2(double x)
{
    if (x > -1e-4 && x < 1e-4) return 1.0 + x * 0.5 * (1.0 + x / 3.0 * (1.0 + x * 0.25));
    return (my_exp(x) - 1.0) / x;
}

/* ---- zipf sampler over ranks 1..n ----
 * The head, ranks 1..HEAD, and the tail as one more outcome, are drawn with an alias
 * table (exact weights k^-s; the tail weight from Euler-Maclaurin); a tail draw is made
 * by rejection-inversion restricted to ranks HEAD+1..n. At theta 0.99 and 4M keys (256 MiB), 63%
 * of draws end in the table (a few ns), the rest cost ~2-3 exp/log. */

#ifndef HEAD
#define HEAD 16384
#endif

struct zipf {
    double s, n, h_int_xm, h_int_n, sval, m;
    uint64_t k;           /* outcomes in the alias table: head ranks, plus the tail */
    uint64_t head;        /* ranks in the table */
    uint32_t *prob;       /* threshold on 32 random bits */
    uint32_t *alias;
};

static inline double h_int(const struct zipf *z, double x)
{
    double lx = my_log(x);
    return helper2((1.0 - z->s) * lx) * lx;
}

static inline double h(const struct zipf *z, double x)
{
    return my_exp(-z->s * my_log(x));
}

static inline double h_int_inv(const struct zipf *z, double x)
{
    double t = x * (1.0 - z->s);
    if (t < -1.0) t = -1.0;
    return my_exp(helper1(t) * x);
}

/* sum of k^-s for k in a..b (a >= 2), Euler-Maclaurin to the third derivative */
static double tail_sum(double a, double b, double s)
{
    double pa = my_exp(-s * my_log(a)), pb = my_exp(-s * my_log(b));
    double integral = (my_exp((1.0 - s) * my_log(b)) - my_exp((1.0 - s) * my_log(a))) / (1.0 - s);
    double d1 = -s * (pb / b - pa / a);
    double d3 = -s * (s + 1) * (s + 2) * (pb / (b * b * b) - pa / (a * a * a));
    return integral + (pa + pb) / 2.0 + d1 / 12.0 - d3 / 720.0;
}

static void zipf_init(struct zipf *z, uint64_t n, double s)
{
    z->s = s;
    z->n = (double)n;
    z->head = n <= HEAD ? n : HEAD;
    z->k = n <= HEAD ? n : HEAD + 1;
    z->m = (double)(z->head + 1); /* first tail rank */
    z->h_int_xm = h_int(z, z->m + 0.5) - h(z, z->m);
    z->h_int_n = h_int(z, z->n + 0.5);
    z->sval = 2.0 - h_int_inv(z, h_int(z, 2.5) - h(z, 2.0));
    /* Vose's alias method */
    double *p = malloc(sizeof(double) * z->k);
    uint64_t *small = malloc(sizeof(uint64_t) * z->k), *large = malloc(sizeof(uint64_t) * z->k);
    z->prob = malloc(sizeof(uint32_t) * z->k);
    z->alias = malloc(sizeof(uint32_t) * z->k);
    if (!p || !small || !large || !z->prob || !z->alias) wl_die("zipf table");
    double total = 0;
    for (uint64_t i = 0; i < z->head; i++) total += p[i] = h(z, (double)(i + 1));
    if (z->k > z->head) total += p[z->head] = tail_sum(z->m, z->n, s);
    uint64_t ns = 0, nl = 0;
    for (uint64_t i = 0; i < z->k; i++) {
        p[i] = p[i] * (double)z->k / total;
        z->alias[i] = (uint32_t)i;
        if (p[i] < 1.0) small[ns++] = i;
        else large[nl++] = i;
    }
    while (ns && nl) {
        uint64_t l = small[--ns], g = large[nl - 1];
        z->prob[l] = (uint32_t)(p[l] * 4294967296.0);
        z->alias[l] = (uint32_t)g;
        p[g] = (p[g] + p[l]) - 1.0;
        if (p[g] < 1.0) {
            nl--;
            small[ns++] = g;
        }
    }
    while (nl) z->prob[large[--nl]] = UINT32_MAX;
    while (ns) z->prob[small[--ns]] = UINT32_MAX; /* rounding leftovers */
    free(p);
    free(small);
    free(large);
}

/* A rank in [0, n): 0 is the most popular key. */
static inline uint64_t zipf_sample(const struct zipf *z, uint64_t *rng)
{
    uint64_t r = wl_rand(rng);
    uint64_t i = ((r >> 32) * z->k) >> 32;
    if ((uint32_t)r >= z->prob[i]) i = z->alias[i];
    if (i < z->head) return i;
    for (;;) {
        double u01 = (double)(wl_rand(rng) >> 11) * (1.0 / 9007199254740992.0);
        double u = z->h_int_n + u01 * (z->h_int_xm - z->h_int_n);
        double x = h_int_inv(z, u);
        double kd = x + 0.5;
        if (kd < z->m) kd = z->m;
        if (kd > z->n) kd = z->n;
        uint64_t k = (uint64_t)kd;
        if ((double)k - x <= z->sval || u >= h_int(z, (double)k + 0.5) - h(z, (double)k))
            return k - 1;
    }
}

/* ---- the workload ---- */

static struct {
    struct value *vals;
    uint64_t nslots;
    uint64_t key_salt;
    struct zipf z;
    uint64_t rng;
    uint64_t seq; /* operations so far: the version written */
} s;

static inline uint64_t slot_of(uint64_t key)
{
    return wl_below(wl_splitmix64(key ^ s.key_salt), s.nslots);
}

static void batch(void *ctx, int tid, uint64_t elapsed_ns)
{
    (void)ctx;
    (void)tid;
    (void)elapsed_ns;
    uint64_t rng = s.rng, seq = s.seq;
    for (int i = 0; i < BATCH_OPS; i++) {
        uint64_t key = zipf_sample(&s.z, &rng);
        struct value *v = &s.vals[slot_of(key)];
        uint64_t x = key * 0x9e3779b97f4a7c15ULL + seq;
        v->version = ++seq;
        for (int j = 0; j < 7; j++) v->payload[j] = x + (uint64_t)j;
    }
    s.rng = rng;
    s.seq = seq;
}

int main(int argc, char **argv)
{
    struct wl_opts o = wl_parse(argc, argv, "zipf_updates", 1, 1);
    size_t bytes = o.mib * WL_MiB;
    s.nslots = bytes / sizeof(struct value);
    s.vals = wl_alloc(bytes);
    s.key_salt = wl_splitmix64(o.seed ^ 0x7a697066ULL);
    for (uint64_t i = 0; i < s.nslots; i++) {
        s.vals[i].version = 0;
        for (int j = 0; j < 7; j++) s.vals[i].payload[j] = wl_splitmix64(i * 8 + (uint64_t)j);
    }
    zipf_init(&s.z, s.nslots, THETA);
    s.rng = wl_rng_seed(o.seed, 0);
    wl_add_region(s.vals, bytes);
    wl_run(&o, BATCH_OPS, batch, NULL);
    wl_report(wl_checksum_words((const uint64_t *)s.vals, bytes / sizeof(uint64_t)));
    return 0;
}
