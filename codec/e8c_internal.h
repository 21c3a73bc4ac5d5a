/*
 * e8c_internal.h: what the codec's .c files share (not installed, not API).
 *
 * The context (struct e8c_ctx) holds a validated fingerprint copy, its id,
 * the Hadamard plan and signs, a cached RoPE cos/sin table, zstd contexts
 * and one workspace sized by e8c_ctx_reserve (or grown on demand).
 */
#ifndef E8C_INTERNAL_H
#define E8C_INTERNAL_H

#include <stdarg.h>
#include <stdint.h>
#include <stddef.h>
#include <zstd.h>

#include "codec/e8codec.h"

#define E8C_MAX_BLOCKS 10 /* binary expansion of head_dim <= 512, blocks >= 8 */
#define E8C_N_STREAMS 8   /* method 1 */
#define E8C_FRAME_FIXED 52u
#define E8C_DESC_SIZE 13u
#define E8C_CHUNK_FIXED 64u
#define E8C_FP_MAX 65536u
#define E8C_MAX_ABS 18446744073709551616.0 /* 2^64 */
#define E8C_R32_TAB (2u * 5u * 4096u) /* bytes of the rans32 decoder's slot tables (two sets) */

enum { E8C_METHOD_RAW = 0, E8C_METHOD_E8 = 1 };
enum { E8C_STREAM_SCALES_HI, E8C_STREAM_SCALES_LO, E8C_STREAM_COSETS,
       E8C_STREAM_COORDS, E8C_STREAM_HALVES, E8C_STREAM_ESCAPES,
       E8C_STREAM_MODES, E8C_STREAM_RAW };
enum { E8C_CODING_STORED = 0, E8C_CODING_ZSTD = 1, E8C_CODING_RANS = 2, E8C_CODING_RANS32 = 3 };

/* Hadamard plan for one head_dim (FORMAT.md section 3). */
typedef struct e8c_hplan {
    uint32_t n, pow2, nblocks;
    uint32_t bsize[E8C_MAX_BLOCKS], boff[E8C_MAX_BLOCKS];
    float gain[E8C_MAX_BLOCKS];
    float sign0[E8C_MAX_HEAD_DIM], sign1[E8C_MAX_HEAD_DIM];
    uint16_t perm[E8C_MAX_HEAD_DIM]; /* w[k] = u[perm[k]] */
} e8c_hplan;

/* Work arrays of one layer, sized for ws_tokens tokens. */
typedef struct e8c_work {
    uint32_t tokens;           /* capacity in tokens */
    uint16_t *scales;          /* [H][T] */
    int16_t *points2;          /* [H][T][n] */
    uint8_t *raw;              /* [H][T][n] x 4 bytes */
    int32_t *ints;             /* [T][n] one head's S or R */
    uint8_t *sbuf[E8C_N_STREAMS + 1]; /* raw stream bytes; [8]: halves escapes */
    uint8_t *rtmp, *rtmp2;     /* rANS encoder scratch (2 bytes per element),
                                  rANS output (1 byte per element) */
    size_t scap[E8C_N_STREAMS + 1];
    float *vec;                /* scratch, 4 x E8C_MAX_HEAD_DIM floats */
} e8c_work;

struct e8c_ctx {
    e8c_fingerprint fp;
    uint8_t id[E8C_ID_SIZE];
    int backend;               /* e8c_backend resolved: 1 ref, 2 scalar, 3 avx2 */
    char err[256];
    e8c_hplan hp;
    /* cos/sin cache: positions first..first+n-1 at rope_seq_len L */
    int rc_valid;
    uint32_t rc_first, rc_n, rc_L, rc_cap;
    float *rc_cos, *rc_sin;    /* [n][rotary_dim/2] */
    ZSTD_CCtx *zc;
    ZSTD_DCtx *zd;
    uint32_t r32tab[E8C_R32_TAB / 4]; /* rans32 decoder slot tables */
    e8c_work w;
};

/* errors: set ctx->err (printf style) and return code */
int64_t e8c_fail(e8c_ctx *ctx, int64_t code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void e8c_msg(char *msg, size_t size, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* scalar conversions (FORMAT.md section 1) */
float e8c_f16_to_f32(uint16_t h);
uint16_t e8c_f32_to_f16_sat(float f); /* RNE, saturate to +-65504 */
int e8c_f32_to_f16_checked(float f, uint16_t *out); /* -1 on overflow */
float e8c_bf16_to_f32(uint16_t b);
uint16_t e8c_f32_to_bf16(float f);    /* RNE, finite input */
float e8c_load(const void *base, uint32_t dtype, int64_t idx);
void e8c_store(void *base, uint32_t dtype, int64_t idx, float v);
uint32_t e8c_crc32c(const void *p, size_t n);

/* little-endian helpers */
static inline void e8c_put16(uint8_t *p, uint32_t v) { p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); }
static inline void e8c_put32(uint8_t *p, uint32_t v) { for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i)); }
static inline void e8c_put64(uint8_t *p, uint64_t v) { for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i)); }
static inline uint32_t e8c_get16(const uint8_t *p) { return (uint32_t)p[0] | ((uint32_t)p[1] << 8); }
static inline uint32_t e8c_get32(const uint8_t *p) { return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24); }
static inline uint64_t e8c_get64(const uint8_t *p) { return (uint64_t)e8c_get32(p) | ((uint64_t)e8c_get32(p + 4) << 32); }

/* FORMAT.md 5.2: the decorrelation mode of a stream from the three costs (sums of zigzagged
 * integers of modes 1 raw, 2 delta, 3 mean); E8C_DECOR_AUTO takes the first smallest, any
 * other value is forced. One rule for the reference and the fast paths. */
static inline uint32_t e8c_decor_pick(uint32_t forced, uint64_t c1, uint64_t c2, uint64_t c3)
{
    if (forced != E8C_DECOR_AUTO) return forced;
    uint32_t mode = 1;
    if (c2 < c1) mode = 2;
    if (c3 < (mode == 2 ? c2 : c1)) mode = 3;
    return mode;
}

/* fingerprint helpers (e8c_fingerprint.c) */
int e8c_layer_protected(const e8c_fingerprint *fp, uint32_t layer);

/* RoPE (e8c_rope.c) */
void e8c_sincos(float ang, float *s, float *c);
int64_t e8c_ctx_rope_table(e8c_ctx *ctx, uint32_t first, uint32_t n, uint32_t L,
                           const float **cos_t, const float **sin_t);
void e8c_rope_remove(const e8c_rope *r, float *x, const float *c, const float *s);
void e8c_rope_apply(const e8c_rope *r, float *x, const float *c, const float *s);

/* Hadamard (e8c_hadamard.c) */
void e8c_hplan_init(e8c_hplan *hp, uint32_t n, uint64_t seed);
void e8c_hadamard_fwd(const e8c_hplan *hp, float *x, float *tmp);
void e8c_hadamard_inv(const e8c_hplan *hp, float *y, float *tmp);

/* per-vector quantizer (e8c_ref.c = reference; e8c_fast.c = fast) */
uint16_t e8c_ref_scale(const float *y, uint32_t n, float step);
void e8c_ref_e8_block(const float *t, int16_t *p2);
void e8c_ref_quantize_vec(const float *y, uint32_t n, float step,
                          uint16_t *scale, int16_t *p2);
/* the fast paths' E8 search of one vector (tests; e8c_fast_body.h): returns
 * the 8-block groups the AVX2 filter left to the exact rule */
uint32_t e8c_e8_vec_base(const float *y, uint32_t n, float sf, int16_t *p2);
uint32_t e8c_e8_vec_avx2(const float *y, uint32_t n, float sf, int16_t *p2); /* AVX2 CPUs only */
void e8c_scale4_avx2(const float *y, uint32_t n, float step, uint16_t sc[4]); /* AVX2 CPUs only */
/* one head's stored integers, decorrelation mode (forced or chosen), means
 * and coordinate/half symbols (e8c_fast_body.h; e8c_pack and tests) */
uint32_t e8c_pack_head_avx2(const int16_t *p2, uint32_t Q, uint32_t n, uint32_t forced, int32_t *S,
                            int32_t *M, uint8_t *cs, uint8_t *hs, int *esc);
/* the decoder's inverse for a frame without escapes: points of one head
 * from its symbols (cs: readable n bytes per 8-block of 7); nonzero if a
 * symbol is 255 or a point leaves int16 (e8c_fast_body.h; e8c_unpack) */
uint32_t e8c_head_points_avx2(const uint8_t *cs, const uint8_t *hs, uint32_t Q, uint32_t n,
                              uint8_t mode, const int32_t *M, const uint8_t *cos_bits, size_t b0,
                              int32_t *prev, int16_t *p2);
void e8c_ref_dequantize_vec(uint16_t scale, const int16_t *p2, uint32_t n,
                            float *y);

/* numeric layer quantize/dequantize, both backends (e8c_quant.c) */
typedef struct e8c_layer_geom {
    uint32_t H, n, N, first_pos, rope_seq_len, kind, layer, method;
    uint32_t raw_head, raw_tail;
} e8c_layer_geom;

int64_t e8c_ref_quantize_layer(e8c_ctx *ctx, const e8c_layer_geom *g,
                               const e8c_tensor *src, e8c_qlayer *q);
int64_t e8c_ref_dequantize_layer(e8c_ctx *ctx, const e8c_qlayer *q,
                                 const e8c_decode_params *dp,
                                 const e8c_tensor *dst);
int64_t e8c_fast_quantize_layer(e8c_ctx *ctx, const e8c_layer_geom *g,
                                const e8c_tensor *src, e8c_qlayer *q);
int64_t e8c_fast_dequantize_layer(e8c_ctx *ctx, const e8c_qlayer *q,
                                  const e8c_decode_params *dp,
                                  const e8c_tensor *dst);

/* workspace (e8c_ctx.c) */
int64_t e8c_work_reserve(e8c_ctx *ctx, uint32_t tokens);
int64_t e8c_check_tensor(e8c_ctx *ctx, const e8c_tensor *t, uint32_t n_tokens);

/* rANS (e8c_rans.c) */
size_t e8c_rans_encode(const uint8_t *src, size_t n, uint8_t *dst, size_t cap, uint8_t *tmp);
int e8c_rans_decode(const uint8_t *src, size_t len, uint8_t *dst, size_t n);
uint16_t e8c_scale_code(double rms, float step);
void e8c_rans_normalize(const uint32_t cnt[256], size_t n, uint32_t f[256]);

/* rans32, coding 3 (e8c_rans32.c): encoders return the stream size, or 0
 * if it does not fit in cap bytes; decoders 0 or -1 (corrupt). */
uint32_t e8c_rans32_lanes(size_t n);
size_t e8c_rans32_encode_ref(const uint8_t *sym, size_t n, uint8_t *dst, size_t cap,
                             uint16_t *words /* n entries */);
int e8c_rans32_decode_ref(const uint8_t *src, size_t len, uint8_t *dst, size_t n);
size_t e8c_rans32_encode(const uint8_t *sym, size_t n, uint8_t *dst, size_t cap); /* scalar */
size_t e8c_rans32_encode_ex(const uint8_t *sym, size_t n, uint8_t *dst, size_t cap,
                            int simd /* 1: AVX2 rounds; only where e8c_cpu_has_avx2() */);
/* two streams at once, the same bytes (*lb: B's size or 0; see e8c_rans32.c) */
size_t e8c_rans32_encode2(const uint8_t *sa, size_t na, uint8_t *da, size_t capa,
                          const uint8_t *sb, size_t nb, uint8_t *db, size_t capb, size_t *lb,
                          int simd);

/* rans32 encoder step (e8c_rans32.c, e8c_rans32_avx2.c) */
typedef struct e8c_r32_esym {
    uint64_t xmax; /* renormalize when x >= xmax = f << 20 */
    uint64_t rcp;  /* ceil(2^44 / f): x / f = (x * rcp) >> 44 for x < f << 20 */
    uint32_t cmpl; /* 4096 - f */
    uint32_t start;
} e8c_r32_esym;

/* One encoding step.  Branch-free: the word is stored speculatively at
 * *wp - 2 (the caller guarantees room) and kept only if needed. */
static inline uint32_t e8c_r32_put(uint32_t x, const e8c_r32_esym *e, uint8_t **wp)
{
    uint32_t need = (uint64_t)x >= e->xmax;
    e8c_put16(*wp - 2, x & 0xFFFF);
    *wp -= 2 * need;
    x >>= 16 * need;
    uint32_t q = (uint32_t)(((uint64_t)x * e->rcp) >> 44);
    return x + e->start + q * e->cmpl;
}

/* A one-lane stream encoded alongside the AVX2 rounds of another: symbols
 * i-1 .. 0 left, state, table, words written down from wp (stops where
 * fewer than 2 bytes are left above dst). */
typedef struct e8c_r32_side {
    const uint8_t *sym;
    size_t i;
    uint32_t x;
    const e8c_r32_esym *es;
    uint8_t *wp;
    const uint8_t *dst;
} e8c_r32_side;
int e8c_rans32_rounds_avx2(const uint8_t *sym, size_t i, uint32_t K, uint32_t *x,
                           const uint32_t *es, uint8_t **wp, const uint8_t *dst,
                           e8c_r32_side *side /* or NULL */);
int e8c_cpu_has_avx2(void);
void e8c_hist_avx2(const uint8_t *src, size_t n, uint32_t cnt[256]); /* adds to cnt */
int e8c_rans32_decode(const uint8_t *src, size_t len, uint8_t *dst, size_t n,
                      void *tab /* E8C_R32_TAB / 2 bytes, 4-aligned */);
int e8c_rans32_decode_ex(const uint8_t *src, size_t len, uint8_t *dst, size_t n, void *tab,
                         int simd /* 1: AVX2 for 32 lanes; only where e8c_cpu_has_avx2() */);
void e8c_rans32_dec32_avx2(uint32_t *x, const uint32_t *P, const uint8_t *wd, size_t *pp, size_t W,
                           uint8_t *out, size_t *pi, size_t N);
/* two streams at once, the same verdicts (see e8c_rans32.c) */
int e8c_rans32_decode2(const uint8_t *sa, size_t la, uint8_t *oa, size_t na,
                       const uint8_t *sb, size_t lb, uint8_t *ob, size_t nb,
                       void *tab /* E8C_R32_TAB bytes, 4-aligned */, int simd);

/* pack/unpack (e8c_pack.c) */
int64_t e8c_pack(e8c_ctx *ctx, const e8c_qlayer *q, uint8_t *dst, size_t cap);
int64_t e8c_unpack(e8c_ctx *ctx, const uint8_t *src, size_t size,
                   e8c_qlayer *q, const e8c_frame_info *fi);
int64_t e8c_frame_parse(const uint8_t *src, size_t size, e8c_frame_info *fi,
                        const uint8_t **streams, uint32_t desc[][4],
                        int check_crc);
size_t e8c_frame_bound(const e8c_fingerprint *fp, uint32_t n_tokens);

#endif
