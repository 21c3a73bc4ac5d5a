/*
 * e8c_floors.c: `e8c_bench --floors` — each stage of a frame's encode and
 * decode timed alone, on the bench's real data, next to the tightest loop
 * found for it (the "floor"), summed against the 10 %-of-memcpy budget of
 * issue 2.  tests/codec/NOTES.md reads the table.
 *
 * Built with -mavx2 -mf16c (codec.mk) and run only where cpuid says AVX2.
 * It includes the fast body (codec/e8c_fast_body.h) under its own suffix,
 * so the library's own stage functions (front_v, scale, e8_vec, pack_head,
 * head_points, back_v) are timed one at a time, each over a whole frame:
 * the "now" column is the library's code for that stage, isolated.  Every
 * stage's output is checked against the library's (points, scales, stream
 * symbols, coded bytes, decoded fp16), so a floor cannot skip work.
 *
 * Elements = H x T x head_dim of the frame (as --stages).  Times: CPU time
 * of this thread, best of 9 trials.
 */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define E8C_SFX floor
#include "codec/e8c_fast_body.h"
#include "tests/codec/e8c_floors.h"

static double fl_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* var = best of 9 trials of reps runs of the statement, ns per element */
#define FL_TIME(var, reps, ne, stmt)                                                \
    do {                                                                            \
        double best_ = 1e30;                                                        \
        for (int t_ = 0; t_ < 9; t_++) {                                            \
            double a_ = fl_now();                                                   \
            for (int k_ = 0; k_ < (reps); k_++) { stmt; }                           \
            double b_ = (fl_now() - a_) / (reps);                                   \
            if (b_ < best_) best_ = b_;                                             \
        }                                                                           \
        (var) = best_ * 1e9 / (double)(ne);                                         \
    } while (0)

static volatile uint64_t fl_sink;

/* One frame (layer 1, K or V) and everything the stages produce from it. */
typedef struct fl_frame {
    uint32_t H, T, n, Q, raw_head, kind;
    const uint16_t *src;        /* [H][T][n] fp16 */
    const float *ct, *st;       /* RoPE tables of the quantized tokens, or NULL */
    e8c_qlayer q;               /* the library's quantization */
    uint8_t *frame;             /* the library's frame bytes */
    size_t fsize;
    const uint8_t *stream[E8C_N_STREAMS];
    uint32_t desc[E8C_N_STREAMS][4];
    float *X;                   /* [H][Q][n] after RoPE removal and Hadamard */
    uint8_t *cs, *hs, *cos, *shi, *slo; /* stream symbols (coords, halves, cosets, scales) */
    size_t nc, nh, ncos, nv;
    uint8_t mode[64];
    int32_t *M;                 /* [H][n] means */
    int32_t *S;                 /* [Q][n] scratch */
} fl_frame;

/* fp16 load, range check and store: the memory part of the front end. */
static void fl_load16(const uint16_t *p, float *x, uint32_t n, __m256 *bad)
{
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff)), lim = _mm256_set1_ps(0x1p64f);
    for (uint32_t i = 0; i < n; i += 8) {
        __m256 v = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p + i)));
        *bad = _mm256_or_ps(*bad, _mm256_cmp_ps(_mm256_and_ps(v, absmask), lim, _CMP_NLE_UQ));
        _mm256_storeu_ps(x + i, v);
    }
}

/* The front end over the frame: fp16 -> (RoPE removal) -> sign -> BH into
 * out (ring: a 4-vector ring instead of the whole frame, as the library's
 * four-token loop keeps it). rope 0: no RoPE even for keys. */
static int fl_front(e8c_ctx *ctx, const fl_frame *f, int rope, float *out, int ring)
{
    uint32_t n = f->n, hr = n / 2;
    int ok = 1;
    for (uint32_t h = 0; h < f->H; h++)
        for (uint32_t j = 0; j < f->Q; j++) {
            const uint16_t *p = f->src + ((size_t)h * f->T + f->raw_head + j) * n;
            const float *c = rope && f->ct ? f->ct + (size_t)j * hr : NULL;
            const float *s = rope && f->ct ? f->st + (size_t)j * hr : NULL;
            float *x = ring ? out + (size_t)(j & 3) * n : out + ((size_t)h * f->Q + j) * n;
            ok &= n == 64 ? FN(front_v)(p, c, s, &ctx->hp, x, 8) : FN(front_v)(p, c, s, &ctx->hp, x, 16);
        }
    return ok;
}

static int fl_loadonly(const fl_frame *f, float *ring)
{
    __m256 bad = _mm256_setzero_ps();
    for (uint32_t h = 0; h < f->H; h++)
        for (uint32_t j = 0; j < f->Q; j++)
            fl_load16(f->src + ((size_t)h * f->T + f->raw_head + j) * f->n, ring + (size_t)(j & 3) * f->n, f->n, &bad);
    return _mm256_testz_ps(bad, bad);
}

/* the library's order: four vectors at once (scale4), the rest one by one */
static uint64_t fl_scales(const fl_frame *f, float step)
{
    uint64_t acc = 0;
    size_t v = 0;
    for (; v + 4 <= f->nv; v += 4) {
        uint16_t sc[4];
        FN(scale4)(f->X + v * f->n, f->n, step, sc);
        acc += (uint64_t)sc[0] + sc[1] + sc[2] + sc[3];
    }
    for (; v < f->nv; v++) acc += FN(scale)(f->X + v * f->n, f->n, step);
    return acc;
}

static void fl_e8(const fl_frame *f, int16_t *p2)
{
    for (size_t v = 0; v < f->nv; v++) {
        uint16_t s = f->q.scales[v];
        if (s) FN(e8_vec)(f->X + v * f->n, f->n, e8c_bf16_to_f32(s), p2 + v * f->n);
    }
}

/* Floor of the scale: an fp32 sum of squares (8 lanes, any order), fp32
 * sqrt, the code where the result is more than 256 units of 2^-20 from a
 * rounding midpoint of the 3-bit code (codec/cuda e8cu_scale_fast's margin
 * test; there the exact f64 path takes the rest, counted in *slow). */
static uint64_t fl_scales_fp32(const fl_frame *f, float step, const uint16_t *check, uint32_t *slow)
{
    uint64_t acc = 0;
    uint32_t n = f->n, ns = 0;
    float inv_n = 1.0f / (float)n;
    for (size_t v = 0; v < f->nv; v++) {
        const float *y = f->X + v * n;
        __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
        for (uint32_t j = 0; j < n; j += 16) {
            __m256 p = _mm256_loadu_ps(y + j), q = _mm256_loadu_ps(y + j + 8);
            a0 = _mm256_add_ps(a0, _mm256_mul_ps(p, p));
            a1 = _mm256_add_ps(a1, _mm256_mul_ps(q, q));
        }
        __m256 a = _mm256_add_ps(a0, a1);
        __m128 h = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
        h = _mm_add_ps(h, _mm_movehl_ps(h, h));
        h = _mm_add_ss(h, _mm_shuffle_ps(h, h, 1));
        float T = _mm_cvtss_f32(h), w = sqrtf(T * inv_n) * step;
        uint32_t b;
        memcpy(&b, &w, 4);
        uint32_t off = (b & 0xfffffu) - 0x80000u + 256u;
        int ok = T >= 0x1p-80f && T <= 0x1p80f && off > 512u;
        uint16_t sc = (uint16_t)(((b + 0x80000u) & 0xfff00000u) >> 16);
        ns += !ok;
        if (check && ok && sc != check[v]) return UINT64_MAX;
        acc += sc;
    }
    if (slow) *slow = ns;
    return acc;
}

#ifdef __FMA__
/* Floor of the E8 stage: t = y / s by one reciprocal and two FMA steps
 * (Markstein) instead of a division per register, then the library's
 * e8_fast8 (the exact pair where it cannot decide, from a true division:
 * as the library).  Checked equal to the library's points below. */
static void fl_e8_vec_fma(const float *y, uint32_t n, float sf, int16_t *p2)
{
    const __m256 vsf = _mm256_set1_ps(sf), r = _mm256_div_ps(_mm256_set1_ps(1.0f), vsf);
    for (uint32_t b = 0; b < n; b += 64) {
        __m256 t[8], u[8];
        for (int i = 0; i < 8; i++) t[i] = _mm256_loadu_ps(y + b + 8 * i);
        FN(tr8)(t);
        for (int i = 0; i < 8; i++) {
            __m256 q0 = _mm256_mul_ps(t[i], r);
            t[i] = _mm256_fmadd_ps(_mm256_fnmadd_ps(q0, vsf, t[i]), r, q0);
        }
        if (!FN(e8_fast8)(t, u)) {
            FN(e8_vec)(y + b, 64, sf, p2 + b);
            continue;
        }
        FN(tr8)(u);
        for (int i = 0; i < 8; i += 2) {
            __m256i a = _mm256_cvtps_epi32(u[i]), z = _mm256_cvtps_epi32(u[i + 1]);
            _mm256_storeu_si256((__m256i *)(p2 + b + 8 * i), _mm256_permute4x64_epi64(_mm256_packs_epi32(a, z), 0xD8));
        }
    }
}

static void fl_e8_fma(const fl_frame *f, int16_t *p2)
{
    for (size_t v = 0; v < f->nv; v++) {
        uint16_t s = f->q.scales[v];
        if (s) fl_e8_vec_fma(f->X + v * f->n, f->n, e8c_bf16_to_f32(s), p2 + v * f->n);
    }
}
#endif

/* e8c_pack's lattice layout: scale bytes, coset bits, per head S +
 * decorrelation choice + coordinate/half symbols (pack_head).  Returns 1 if
 * a head needs escapes (then the symbols are not the stream's). */
static int fl_layout(fl_frame *f, uint32_t forced)
{
    size_t nv = f->nv, n = f->n, nb = nv * n / 8;
    for (size_t v = 0; v < nv; v++) {
        f->shi[v] = (uint8_t)(f->q.scales[v] >> 8);
        f->slo[v] = (uint8_t)f->q.scales[v];
    }
    for (size_t B = 0; B < (nb + 7) / 8; B++) {
        uint32_t byte = 0;
        for (size_t k = 0; k < 8 && 8 * B + k < nb; k++)
            byte |= (uint32_t)(f->q.points2[64 * B + 8 * k] & 1) << k;
        f->cos[B] = (uint8_t)byte;
    }
    f->ncos = (nb + 7) / 8;
    int anyesc = 0;
    f->nc = f->nh = 0;
    for (uint32_t h = 0; h < f->H; h++) {
        int esc = 0;
        f->mode[h] = (uint8_t)FN(e8c_pack_head)(f->q.points2 + (size_t)h * f->Q * n, f->Q, f->n, forced, f->S,
                                               f->M + (size_t)h * n, f->cs + f->nc, f->hs + f->nh, &esc);
        anyesc |= esc;
        f->nc += (size_t)f->Q * n / 8 * 7;
        f->nh += (size_t)f->Q * n / 8;
    }
    return anyesc;
}

static int fl_points(const fl_frame *f, int16_t *p2, int32_t *prev)
{
    uint32_t bad = 0, n = f->n;
    size_t ic = 0, ih = 0;
    for (uint32_t h = 0; h < f->H; h++) {
        bad |= FN(e8c_head_points)(f->cs + ic, f->hs + ih, f->Q, n, f->mode[h], f->M + (size_t)h * n, f->cos,
                                   (size_t)h * f->Q * n / 8, prev, p2 + (size_t)h * f->Q * n);
        ic += (size_t)f->Q * n / 8 * 7;
        ih += (size_t)f->Q * n / 8;
    }
    return bad ? -1 : 0;
}

static void fl_back(e8c_ctx *ctx, const fl_frame *f, int rope, uint16_t *out)
{
    uint32_t n = f->n, hr = n / 2;
    for (uint32_t h = 0; h < f->H; h++)
        for (uint32_t j = 0; j < f->Q; j++) {
            size_t v = (size_t)h * f->Q + j;
            const float *c = rope && f->ct ? f->ct + (size_t)j * hr : NULL;
            const float *s = rope && f->ct ? f->st + (size_t)j * hr : NULL;
            uint16_t *o = out + ((size_t)h * f->T + f->raw_head + j) * n;
            float sf = e8c_bf16_to_f32(f->q.scales[v]);
            if (n == 64) FN(back_v)(f->q.points2 + v * n, sf, c, s, &ctx->hp, o, 8);
            else FN(back_v)(f->q.points2 + v * n, sf, c, s, &ctx->hp, o, 16);
        }
}

/* Rows of the table: now (the library's stage alone) and floor. */
enum { R_FRONT, R_ROPE, R_HAD, R_SCALE, R_E8, R_LAYOUT, R_RANS, R_CRC, R_ENC_N,
       R_DCRC = R_ENC_N, R_DRANS, R_POINTS, R_BACK, R_DROPE, R_SUM_N,
       R_XHIST = R_SUM_N, R_XSCALES, R_XDSCALES, R_XSCALESLOW, R_N };
static const char *fl_row_name[R_N] = {
    "fp16 load + range check", "RoPE removal (keys)", "randomized Hadamard (+ sign)",
    "per-vector scale", "E8 nearest point, both cosets (incl. t = y / s)",
    "layout: cosets, S, decorrelation choice, symbols, escape check",
    "rANS encode ~1 symbol/element (incl. histograms)", "CRC32C of the frame",
    "CRC32C of the frame", "rANS decode", "points from symbols (+ decorrelation undo)",
    "dequantize: scale, Hadamard, sign, fp16 store", "RoPE restore (keys)",
    "(in rANS encode: the histograms)", "(in rANS encode: the two one-lane scale streams)",
    "(in rANS decode: the two one-lane scale streams)",
    "(scale floor: share of vectors its margin test leaves to f64)"};

typedef struct fl_row { double now, floor; } fl_row;

/* Prepares frame f (kind) of layer 1 from the dataset's fp16 data. */
static int fl_prepare(e8c_ctx *ctx, const uint16_t *layer_kv, uint32_t H, uint32_t T, uint32_t n,
                      uint32_t kind, fl_frame *f)
{
    memset(f, 0, sizeof *f);
    f->H = H; f->T = T; f->n = n; f->kind = kind;
    f->src = layer_kv + (size_t)kind * H * T * n;
    e8c_qlayer_sizes qs;
    e8c_qlayer_size(ctx, T, &qs);
    f->q.scales = malloc(qs.scales); f->q.points2 = malloc(qs.points2); f->q.raw = malloc(qs.raw + 16);
    int64_t cap = e8c_frame_max_size(ctx, T);
    f->frame = malloc((size_t)cap);
    size_t ne = (size_t)H * T * n;
    f->X = malloc(4 * ne); f->cs = malloc(ne + 64); f->hs = malloc(ne / 8 + 64); f->cos = malloc(ne / 64 + 64);
    f->shi = malloc((size_t)H * T + 64); f->slo = malloc((size_t)H * T + 64);
    f->M = malloc(4 * (size_t)H * n); f->S = malloc(4 * ne);
    if (!f->q.scales || !f->q.points2 || !f->q.raw || !f->frame || !f->X || !f->cs || !f->hs || !f->cos ||
        !f->shi || !f->slo || !f->M || !f->S || H > 64)
        return -1;
    e8c_tensor t = e8c_tensor_contiguous((void *)(uintptr_t)f->src, E8C_DTYPE_F16, T, n);
    e8c_frame_params p = {1, kind, T, T, 0, 0};
    if (e8c_quantize(ctx, &p, &t, &f->q) < 0) return -1;
    int64_t fs = e8c_qlayer_pack(ctx, &f->q, f->frame, (size_t)cap);
    if (fs < 0) return -1;
    f->fsize = (size_t)fs;
    e8c_frame_info fi;
    if (e8c_frame_parse(f->frame, f->fsize, &fi, f->stream, f->desc, 1)) return -1;
    f->raw_head = f->q.n_raw_head;
    f->Q = T - f->q.n_raw_head - f->q.n_raw_tail;
    f->nv = (size_t)H * f->Q;
    if (kind == E8C_K && ctx->fp.rope.type != E8C_ROPE_NONE) {
        if (ctx->fp.rope.layout != E8C_ROPE_LAYOUT_SPLIT_HALF || ctx->fp.rope.rotary_dim != n) return -1;
        if (e8c_ctx_rope_table(ctx, f->q.first_pos + f->raw_head, f->Q, f->q.rope_seq_len, &f->ct, &f->st))
            return -1;
    }
    return 0;
}

static void fl_free(fl_frame *f)
{
    free(f->q.scales); free(f->q.points2); free(f->q.raw); free(f->frame); free(f->X); free(f->cs);
    free(f->hs); free(f->cos); free(f->shi); free(f->slo); free(f->M); free(f->S);
}

#define FL_CHECK(cond, what)                                                        \
    do {                                                                            \
        if (!(cond)) { fprintf(stderr, "floors: %s differs from the library\n", what); return -1; } \
    } while (0)

/* All rows for one frame, added (ns per element of this frame, weighted
 * by its elements) into rows.  big: the K and V frames' coords + halves
 * symbols concatenated (the 32-lane floor streams), nbig of them. */
static int fl_frame_rows(e8c_ctx *ctx, fl_frame *f, const uint8_t *big, size_t nbig,
                         const uint8_t *big32, size_t big32_len, fl_row *rows, double *real)
{
    size_t n = f->n, ne = (size_t)f->H * f->T * n, cap = ne * 2 + 4096;
    int reps = 10, rc = 0;
    float step = f->kind == E8C_K ? ctx->fp.config.k_step : ctx->fp.config.v_step;
    float *ring = aligned_alloc(64, 4 * 4 * E8C_MAX_HEAD_DIM);
    int16_t *p2 = malloc(2 * ne);
    int32_t *prev = malloc(4 * n);
    uint8_t *dst = malloc(cap), *dst2 = malloc(cap), *o1 = malloc(ne + 64), *o2 = malloc(ne + 64);
    uint16_t *out = malloc(2 * ne), *out_ref = malloc(2 * ne);
    void *tab = aligned_alloc(64, E8C_R32_TAB);
    if (!ring || !p2 || !prev || !dst || !dst2 || !o1 || !o2 || !out || !out_ref || !tab) return -1;
    int rope = f->ct != NULL;

    /* --- encode --- */
    FL_CHECK(fl_front(ctx, f, 1, f->X, 0), "front end range check");
    double t_front, t_norope, t_load;
    FL_TIME(t_front, reps, ne, rc |= !fl_front(ctx, f, 1, ring, 1));
    FL_TIME(t_norope, reps, ne, rc |= !fl_front(ctx, f, 0, ring, 1));
    FL_TIME(t_load, reps, ne, rc |= !fl_loadonly(f, ring));
    rows[R_FRONT].now += t_load;
    rows[R_ROPE].now += rope ? t_front - t_norope : 0;
    rows[R_HAD].now += t_norope - t_load;

    uint64_t sref = 0;
    for (size_t v = 0; v < f->nv; v++) {
        uint16_t s = FN(scale)(f->X + v * n, f->n, step);
        FL_CHECK(s == f->q.scales[v], "scale");
        sref += s;
    }
    FL_CHECK(fl_scales(f, step) == sref, "scale (four at once)");
    double t;
    FL_TIME(t, reps, ne, fl_sink += fl_scales(f, step));
    rows[R_SCALE].now += t;
    uint32_t sslow = 0;
    FL_CHECK(fl_scales_fp32(f, step, f->q.scales, &sslow) != UINT64_MAX, "fp32 scale");
    FL_TIME(t, reps, ne, fl_sink += fl_scales_fp32(f, step, NULL, NULL));
    rows[R_SCALE].floor += t;
    rows[R_XSCALESLOW].now += (double)sslow / (double)f->nv;

    memset(p2, 0, 2 * ne);
    fl_e8(f, p2);
    FL_CHECK(!memcmp(p2, f->q.points2, 2 * f->nv * n), "E8 points");
    FL_TIME(t, reps, ne, fl_e8(f, p2));
    rows[R_E8].now += t;
    double e8floor = t;
#ifdef __FMA__
    if (__builtin_cpu_supports("fma")) {
        memset(p2, 0, 2 * ne);
        fl_e8_fma(f, p2);
        FL_CHECK(!memcmp(p2, f->q.points2, 2 * f->nv * n), "E8 points (FMA division)");
        FL_TIME(t, reps, ne, fl_e8_fma(f, p2));
        if (t < e8floor) e8floor = t;
    }
#endif
    rows[R_E8].floor += e8floor;

    FL_CHECK(!fl_layout(f, ctx->fp.config.decorrelation), "escape-free symbols (this data needs escapes)");
    FL_CHECK(f->desc[E8C_STREAM_COORDS][1] == f->nc && f->desc[E8C_STREAM_HALVES][1] == f->nh, "symbol counts");
    FL_CHECK(e8c_rans32_decode(f->stream[E8C_STREAM_COORDS], f->desc[E8C_STREAM_COORDS][2], o1, f->nc, tab) == 0 &&
                 !memcmp(o1, f->cs, f->nc), "coordinate symbols");
    FL_CHECK(e8c_rans32_decode(f->stream[E8C_STREAM_HALVES], f->desc[E8C_STREAM_HALVES][2], o2, f->nh, tab) == 0 &&
                 !memcmp(o2, f->hs, f->nh), "half symbols");
    FL_TIME(t, reps, ne, rc |= fl_layout(f, ctx->fp.config.decorrelation));
    rows[R_LAYOUT].now += t;

    /* rANS now: the library's calls for streams 0, 1 (one lane each) and
     * 3 + 4 together (put_pair) */
    size_t lb = 0, k0, k1, k3;
    k3 = e8c_rans32_encode2(f->cs, f->nc, dst, cap, f->hs, f->nh, dst2, cap, &lb, 1);
    FL_CHECK(k3 == f->desc[E8C_STREAM_COORDS][2] && !memcmp(dst, f->stream[E8C_STREAM_COORDS], k3) &&
                 lb == f->desc[E8C_STREAM_HALVES][2] && !memcmp(dst2, f->stream[E8C_STREAM_HALVES], lb),
             "coords/halves rans32 bytes");
    k0 = e8c_rans32_encode_ex(f->shi, f->nv, dst, cap, 1);
    FL_CHECK(k0 == f->desc[0][2] && !memcmp(dst, f->stream[0], k0), "scales_hi bytes");
    k1 = e8c_rans32_encode_ex(f->slo, f->nv, dst, cap, 1);
    FL_CHECK(k1 == f->desc[1][2] && !memcmp(dst, f->stream[1], k1), "scales_lo bytes");
    FL_TIME(t, reps, ne, {
        fl_sink += e8c_rans32_encode2(f->cs, f->nc, dst, cap, f->hs, f->nh, dst2, cap, &lb, 1);
        fl_sink += e8c_rans32_encode_ex(f->shi, f->nv, dst, cap, 1) + e8c_rans32_encode_ex(f->slo, f->nv, dst, cap, 1);
    });
    rows[R_RANS].now += t;
    FL_TIME(t, reps, ne, fl_sink += e8c_rans32_encode_ex(f->shi, f->nv, dst, cap, 1) + e8c_rans32_encode_ex(f->slo, f->nv, dst, cap, 1));
    rows[R_XSCALES].now += t;
    FL_TIME(t, reps, ne, {
        uint32_t cnt[256] = {0};
        e8c_hist_avx2(f->cs, f->nc, cnt); e8c_hist_avx2(f->hs, f->nh, cnt);
        e8c_hist_avx2(f->shi, f->nv, cnt); e8c_hist_avx2(f->slo, f->nv, cnt);
        fl_sink += cnt[0];
    });
    rows[R_XHIST].now += t;
    /* floor: the same symbols as one 32-lane stream (4 independent AVX2
     * registers of 8 lanes: throughput-bound, as several frames' 8-lane
     * streams side by side would be), at this frame's symbols per element */
    double spe = (double)(f->nc + f->nh + 2 * f->nv) / (double)ne, tb;
    uint8_t *bdst = malloc(2 * nbig + 4096);
    if (!bdst) return -1;
    FL_TIME(tb, reps, nbig, fl_sink += e8c_rans32_encode_ex(big, nbig, bdst, 2 * nbig + 4096, 1));
    FL_CHECK(e8c_rans32_encode_ex(big, nbig, bdst, 2 * nbig + 4096, 1) == big32_len && !memcmp(bdst, big32, big32_len),
             "32-lane encode");
    free(bdst);
    rows[R_RANS].floor += tb * spe;

    FL_TIME(t, reps * 10, ne, fl_sink += e8c_crc32c(f->frame, f->fsize));
    rows[R_CRC].now += t;

    /* --- decode --- */
    rows[R_DCRC].now += t;
    FL_TIME(t, reps, ne, {
        rc |= e8c_rans32_decode2(f->stream[0], f->desc[0][2], o1, f->nv, f->stream[1], f->desc[1][2], o2, f->nv, tab, 1);
        rc |= e8c_rans32_decode2(f->stream[E8C_STREAM_COORDS], f->desc[E8C_STREAM_COORDS][2], o1, f->nc,
                                 f->stream[E8C_STREAM_HALVES], f->desc[E8C_STREAM_HALVES][2], o2, f->nh, tab, 1);
    });
    FL_CHECK(!rc && !memcmp(o1, f->cs, f->nc) && !memcmp(o2, f->hs, f->nh), "decoded symbols");
    double ts;
    FL_TIME(ts, reps, ne, rc |= e8c_rans32_decode2(f->stream[0], f->desc[0][2], o1, f->nv, f->stream[1], f->desc[1][2], o2, f->nv, tab, 1));
    rows[R_XDSCALES].now += ts;
    rows[R_DRANS].now += t;
    uint8_t *ob = malloc(nbig + 64);
    if (!ob) return -1;
    FL_CHECK(e8c_rans32_decode_ex(big32, big32_len, ob, nbig, tab, 1) == 0 && !memcmp(ob, big, nbig), "32-lane decode");
    FL_TIME(tb, reps, nbig, rc |= e8c_rans32_decode_ex(big32, big32_len, ob, nbig, tab, 1));
    free(ob);
    rows[R_DRANS].floor += tb * spe;

    memset(p2, 0, 2 * ne);
    FL_CHECK(fl_points(f, p2, prev) == 0 && !memcmp(p2, f->q.points2, 2 * f->nv * n), "points from symbols");
    FL_TIME(t, reps, ne, rc |= fl_points(f, p2, prev));
    rows[R_POINTS].now += t;

    e8c_tensor o = e8c_tensor_contiguous(out_ref, E8C_DTYPE_F16, f->T, f->n);
    if (e8c_dequantize(ctx, &f->q, NULL, &o)) return -1;
    memcpy(out, out_ref, 2 * ne); /* raw tokens: the library's */
    fl_back(ctx, f, 1, out);
    FL_CHECK(!memcmp(out, out_ref, 2 * ne), "dequantized fp16");
    double t_back, t_backnr;
    FL_TIME(t_back, reps, ne, fl_back(ctx, f, 1, out));
    FL_TIME(t_backnr, reps, ne, fl_back(ctx, f, 0, out));
    rows[R_BACK].now += t_backnr;
    rows[R_DROPE].now += rope ? t_back - t_backnr : 0;

    /* the real halves, as --stages times them */
    e8c_frame_params p = {1, f->kind, f->T, f->T, 0, 0};
    e8c_tensor src = e8c_tensor_contiguous((void *)(uintptr_t)f->src, E8C_DTYPE_F16, f->T, f->n);
    double qn, pk, up, dq;
    FL_TIME(qn, reps, ne, rc |= e8c_quantize(ctx, &p, &src, &f->q) < 0);
    FL_TIME(pk, reps, ne, rc |= e8c_qlayer_pack(ctx, &f->q, dst, cap) < 0);
    FL_TIME(up, reps, ne, rc |= e8c_qlayer_unpack(ctx, f->frame, f->fsize, &f->q) < 0);
    FL_TIME(dq, reps, ne, rc |= e8c_dequantize(ctx, &f->q, NULL, &o) < 0);
    real[0] += qn + pk;
    real[1] += up + dq;
    (void)sref;
    free(ring); free(p2); free(prev); free(dst); free(dst2); free(o1); free(o2); free(out); free(out_ref); free(tab);
    return rc ? -1 : 0;
}

int e8c_floors(const char *name, const e8c_fingerprint *fp0, const uint16_t *layer_kv, uint32_t T,
               double memcpy_ns)
{
    e8c_fingerprint fp = *fp0;
    uint32_t H = fp.n_kv_heads, n = fp.head_dim;
    if (!e8c_cpu_has_avx2() || e8c_preset_apply("K3V2", &fp.config)) {
        fprintf(stderr, "floors: need AVX2\n");
        return -1;
    }
    e8c_ctx *ctx = e8c_ctx_create(&fp, NULL);
    if (!ctx || e8c_ctx_reserve(ctx, T) || ctx->backend != 3 || (n != 64 && n != 128)) {
        fprintf(stderr, "floors: need the AVX2 backend and head_dim 64 or 128\n");
        return -1;
    }
    fl_frame fr[2];
    fl_row rows[R_N];
    memset(fr, 0, sizeof fr);
    double real[2] = {0, 0};
    memset(rows, 0, sizeof rows);
    int rc = 0;
    for (uint32_t k = 0; k < 2 && !rc; k++) rc = fl_prepare(ctx, layer_kv, H, T, n, k, &fr[k]);
    /* byte identity on this data: the reference backend's frames */
    e8c_ctx *ref = rc ? NULL : e8c_ctx_create(&fp, NULL);
    uint64_t slow = 0, groups = 0;
    for (uint32_t k = 0; k < 2 && !rc; k++) {
        int64_t cap = e8c_frame_max_size(ctx, T);
        uint8_t *b = malloc((size_t)cap);
        e8c_tensor t = e8c_tensor_contiguous((void *)(uintptr_t)fr[k].src, E8C_DTYPE_F16, T, n);
        e8c_frame_params p = {1, k, T, T, 0, 0};
        int64_t m = b && ref && !e8c_ctx_set_backend(ref, E8C_BACKEND_REF) ? e8c_frame_encode(ref, &p, &t, b, (size_t)cap) : -1;
        if (m != (int64_t)fr[k].fsize || memcmp(b, fr[k].frame, fr[k].fsize)) {
            fprintf(stderr, "floors: the reference's %c frame differs from the fast path's\n", k ? 'V' : 'K');
            rc = -1;
        }
        free(b);
        /* how often the fast E8 filter leaves a group of 8 blocks to the exact rule */
        int16_t p2[E8C_MAX_HEAD_DIM];
        fl_front(ctx, &fr[k], 1, fr[k].X, 0);
        for (size_t v = 0; v < fr[k].nv; v++)
            if (fr[k].q.scales[v]) {
                slow += e8c_e8_vec_avx2(fr[k].X + v * n, n, e8c_bf16_to_f32(fr[k].q.scales[v]), p2);
                groups += n / 64;
            }
    }
    e8c_ctx_free(ref);
    for (uint32_t k = 0; k < 2 && !rc; k++) rc = fl_layout(&fr[k], fp.config.decorrelation) ? -1 : 0;
    size_t nbig = 0;
    uint8_t *big = NULL, *big32 = NULL;
    size_t big32_len = 0;
    if (!rc) {
        for (uint32_t k = 0; k < 2; k++) nbig += fr[k].nc + fr[k].nh;
        big = malloc(nbig);
        big32 = malloc(2 * nbig + 4096);
        size_t o = 0;
        for (uint32_t k = 0; big && k < 2; k++) {
            memcpy(big + o, fr[k].cs, fr[k].nc); o += fr[k].nc;
            memcpy(big + o, fr[k].hs, fr[k].nh); o += fr[k].nh;
        }
        big32_len = big && big32 ? e8c_rans32_encode_ex(big, nbig, big32, 2 * nbig + 4096, 1) : 0;
        if (!big32_len || e8c_rans32_lanes(nbig) != 32) rc = -1;
    }
    for (uint32_t k = 0; k < 2 && !rc; k++) rc = fl_frame_rows(ctx, &fr[k], big, nbig, big32, big32_len, rows, real);
    if (rc) {
        fprintf(stderr, "floors: %s failed\n", name);
    } else {
        double budget = 10 * memcpy_ns, se[2] = {0, 0}, sd[2] = {0, 0};
        printf("\n%s hd%u, K3V2, %u heads x %u tokens, K and V frames averaged; ns/element "
               "(budget at 10 %% of memcpy: %.3f ns/element; memcpy %.4f ns/element = %.1f GB/s of fp16)\n",
               name, n, H, T, budget, memcpy_ns, 2 / memcpy_ns);
        printf("  %-66s %8s %8s\n", "stage", "now", "floor");
        for (int r = 0; r < R_SUM_N; r++) {
            double now = rows[r].now / 2, flo = rows[r].floor ? rows[r].floor / 2 : now;
            if (r == R_ENC_N) printf("  decode\n");
            if (r == 0) printf("  encode\n");
            printf("  %-66s %8.3f %8.3f\n", fl_row_name[r], now, flo);
            (r < R_ENC_N ? se : sd)[0] += now;
            (r < R_ENC_N ? se : sd)[1] += flo;
        }
        printf("  parts (not summed)\n");
        for (int r = R_SUM_N; r < R_N; r++)
            printf("  %-66s %8.3f%s\n", fl_row_name[r], rows[r].now / 2 * (r == R_XSCALESLOW ? 100 : 1),
                   r == R_XSCALESLOW ? " %" : "");
        printf("  %-66s %8.3f %8.3f   (real quantize + pack: %.3f)\n", "encode sum", se[0], se[1], real[0] / 2);
        printf("  %-66s %8.3f %8.3f   (real unpack + dequantize: %.3f)\n", "decode sum", sd[0], sd[1], real[1] / 2);
        printf("  byte identity: both frames equal the reference backend's; E8 groups of 8 blocks left to the exact rule: "
               "%llu of %llu\n", (unsigned long long)slow, (unsigned long long)groups);
        printf("  floors / budget: encode %.2fx, decode %.2fx (1.00x = 10 %% of memcpy)\n", se[1] / budget,
               sd[1] / budget);
    }
    free(big);
    free(big32);
    for (uint32_t k = 0; k < 2; k++) fl_free(&fr[k]);
    e8c_ctx_free(ctx);
    return rc;
}
