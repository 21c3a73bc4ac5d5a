/*
 * e8c_fingerprint.c: model fingerprint validation, canonical serialization
 * (FORMAT.md section 8), SHA-256 id (OpenSSL), presets, default config.
 */
#include <math.h>
#include <openssl/evp.h>
#include <string.h>

#include "codec/e8c_internal.h"

/* ----------------------------------------------------------- presets */

/* Steps relative to the rotated vector's RMS (FORMAT.md section 9): a step
 * of 0.25 / 0.55 / 1.2 costs about 4.1 / 3 / 2 bits per element on Gaussian
 * data at head_dim 64 and 128, all bytes counted (e8c_bench --sweep), and
 * gives an SNR of about 23 / 17 / 10 dB.  Real KV costs less. */
#define E8C_STEP4 0.25f
#define E8C_STEP3 0.55f
#define E8C_STEP2 1.2f
static const struct { const char *name; float k_step, v_step; } e8c_presets[] = {
    {"K4V4", E8C_STEP4, E8C_STEP4},
    {"K4V3", E8C_STEP4, E8C_STEP3},
    {"K4V2", E8C_STEP4, E8C_STEP2},
    {"K3V3", E8C_STEP3, E8C_STEP3},
    {"K3V2", E8C_STEP3, E8C_STEP2},
    {"K2V2", E8C_STEP2, E8C_STEP2},
};
#define E8C_N_PRESETS (sizeof e8c_presets / sizeof e8c_presets[0])

const char *e8c_preset_name(unsigned i)
{
    return i < E8C_N_PRESETS ? e8c_presets[i].name : NULL;
}

int64_t e8c_preset_apply(const char *name, e8c_config *cfg)
{
    if (!name || !cfg) return E8C_ERR_ARG;
    for (unsigned i = 0; i < E8C_N_PRESETS; i++) {
        if (strcmp(name, e8c_presets[i].name) != 0) continue;
        memset(cfg->preset, 0, sizeof cfg->preset);
        strcpy(cfg->preset, e8c_presets[i].name);
        cfg->k_step = e8c_presets[i].k_step;
        cfg->v_step = e8c_presets[i].v_step;
        return 0;
    }
    return E8C_ERR_PRESET;
}

void e8c_config_default(e8c_config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    e8c_preset_apply(E8C_PRESET_DEFAULT, cfg);
    cfg->sink_tokens = 1; /* SmolLM2 K3V2: KL 0.043 -> 0.026 nats/token */
    cfg->decorrelation = E8C_DECOR_AUTO;
    cfg->zstd_level = 1;
    cfg->hadamard_seed = 0x65386b765f763031ull;
    cfg->entropy = E8C_ENTROPY_RANS32;
}

int e8c_layer_protected(const e8c_fingerprint *fp, uint32_t layer)
{
    const e8c_config *c = &fp->config;
    if (layer < c->protect_first) return 1;
    if (c->protect_last > 0 && layer + c->protect_last >= fp->n_layers) return 1;
    return (int)((c->protect_mask[layer / 64] >> (layer % 64)) & 1u);
}

/* -------------------------------------------------------- validation */

static int pos_finite(double v) { return isfinite(v) && v > 0; }

static int64_t rope_validate(const e8c_fingerprint *fp, char *msg, size_t ms)
{
    const e8c_rope *r = &fp->rope;
    uint32_t t = r->type;
    if (t == E8C_ROPE_UNSET || t > E8C_ROPE_LONGROPE) {
        e8c_msg(msg, ms, "rope.type %u is unset or unknown", t);
        return E8C_ERR_ROPE;
    }
    int uses_factor = t == E8C_ROPE_LINEAR || t == E8C_ROPE_DYNAMIC ||
                      t == E8C_ROPE_YARN || t == E8C_ROPE_LLAMA3;
    int uses_orig = t >= E8C_ROPE_DYNAMIC;
    int uses_llama3 = t == E8C_ROPE_LLAMA3, uses_yarn = t == E8C_ROPE_YARN;
    int uses_att = t == E8C_ROPE_YARN || t == E8C_ROPE_LONGROPE;
    int uses_lr = t == E8C_ROPE_LONGROPE;
    if (t == E8C_ROPE_NONE) {
        if (r->layout || r->rotary_dim || r->theta != 0) {
            e8c_msg(msg, ms, "rope.type none: layout, rotary_dim and theta must be 0");
            return E8C_ERR_ROPE;
        }
    } else {
        if (r->layout != E8C_ROPE_LAYOUT_SPLIT_HALF && r->layout != E8C_ROPE_LAYOUT_INTERLEAVED) {
            e8c_msg(msg, ms, "rope.layout %u: must be split-half (1) or interleaved (2)", r->layout);
            return E8C_ERR_ROPE;
        }
        if (r->rotary_dim < 2 || r->rotary_dim % 2 || r->rotary_dim > fp->head_dim) {
            e8c_msg(msg, ms, "rope.rotary_dim %u: must be even, in [2, head_dim=%u]",
                    r->rotary_dim, fp->head_dim);
            return E8C_ERR_ROPE;
        }
        if (!pos_finite(r->theta)) {
            e8c_msg(msg, ms, "rope.theta must be finite and > 0");
            return E8C_ERR_ROPE;
        }
    }
    if (uses_factor ? !pos_finite(r->factor) : r->factor != 0) {
        e8c_msg(msg, ms, "rope.factor %s", uses_factor ? "must be finite and > 0" : "must be 0 for this type");
        return E8C_ERR_ROPE;
    }
    if (uses_orig ? r->original_max_pos == 0 : r->original_max_pos != 0) {
        e8c_msg(msg, ms, "rope.original_max_pos %s", uses_orig ? "must be > 0" : "must be 0 for this type");
        return E8C_ERR_ROPE;
    }
    if (t == E8C_ROPE_DYNAMIC && r->rotary_dim < 4) {
        e8c_msg(msg, ms, "dynamic rope needs rotary_dim >= 4");
        return E8C_ERR_ROPE;
    }
    if (uses_llama3 ? !(pos_finite(r->low_freq_factor) && pos_finite(r->high_freq_factor) &&
                        r->high_freq_factor > r->low_freq_factor)
                    : (r->low_freq_factor != 0 || r->high_freq_factor != 0)) {
        e8c_msg(msg, ms, "rope low/high_freq_factor %s",
                uses_llama3 ? "must be finite, > 0, high > low" : "must be 0 for this type");
        return E8C_ERR_ROPE;
    }
    if (uses_yarn ? !(pos_finite(r->beta_fast) && pos_finite(r->beta_slow) && r->yarn_no_truncate <= 1)
                  : (r->beta_fast != 0 || r->beta_slow != 0 || r->yarn_no_truncate)) {
        e8c_msg(msg, ms, "rope beta_fast/beta_slow/yarn_no_truncate %s",
                uses_yarn ? "must be given (HF defaults 32 and 1)" : "must be 0 for this type");
        return E8C_ERR_ROPE;
    }
    if (uses_att ? !pos_finite(r->attention_factor) : r->attention_factor != 0) {
        e8c_msg(msg, ms, "rope.attention_factor %s",
                uses_att ? "must be given (> 0)" : "must be 0 for this type");
        return E8C_ERR_ROPE;
    }
    uint32_t nlr = uses_lr ? r->rotary_dim / 2 : 0;
    if (r->n_longrope != nlr) {
        e8c_msg(msg, ms, "rope.n_longrope %u: must be %u", r->n_longrope, nlr);
        return E8C_ERR_ROPE;
    }
    for (uint32_t i = 0; i < E8C_MAX_ROPE_FACTORS; i++) {
        int used = i < nlr;
        float a = r->short_factor[i], b = r->long_factor[i];
        if (used ? !(pos_finite(a) && pos_finite(b)) : (a != 0 || b != 0)) {
            e8c_msg(msg, ms, "rope short/long_factor[%u] %s", i,
                    used ? "must be finite and > 0" : "must be 0 past n_longrope");
            return E8C_ERR_ROPE;
        }
    }
    return 0;
}

static int64_t config_validate(const e8c_fingerprint *fp, char *msg, size_t ms)
{
    const e8c_config *c = &fp->config;
    if (memchr(c->preset, 0, sizeof c->preset) == NULL) {
        e8c_msg(msg, ms, "config.preset is not NUL-terminated");
        return E8C_ERR_CONFIG;
    }
    size_t pl = strlen(c->preset);
    for (size_t i = pl; i < sizeof c->preset; i++)
        if (c->preset[i]) { e8c_msg(msg, ms, "config.preset: bytes after NUL must be 0"); return E8C_ERR_CONFIG; }
    const float lo = 1.0f / 64, hi = 16.0f;
    if (!(c->k_step >= lo && c->k_step <= hi) || !(c->v_step >= lo && c->v_step <= hi)) {
        e8c_msg(msg, ms, "config k_step %g / v_step %g: must be in [1/64, 16]",
                (double)c->k_step, (double)c->v_step);
        return E8C_ERR_CONFIG;
    }
    if (c->protect_first > fp->n_layers || c->protect_last > fp->n_layers) {
        e8c_msg(msg, ms, "config.protect_first/last exceed n_layers %u", fp->n_layers);
        return E8C_ERR_CONFIG;
    }
    for (uint32_t l = fp->n_layers; l < E8C_MAX_LAYERS; l++)
        if ((c->protect_mask[l / 64] >> (l % 64)) & 1u) {
            e8c_msg(msg, ms, "config.protect_mask names layer %u >= n_layers %u", l, fp->n_layers);
            return E8C_ERR_CONFIG;
        }
    if (c->decorrelation > E8C_DECOR_MEAN) {
        e8c_msg(msg, ms, "config.decorrelation %u unknown", c->decorrelation);
        return E8C_ERR_CONFIG;
    }
    if (c->entropy > E8C_ENTROPY_V1) {
        e8c_msg(msg, ms, "config.entropy %u unknown (0 rans32, 1 best, 2 v1)", c->entropy);
        return E8C_ERR_CONFIG;
    }
    if (c->zstd_level < -7 || c->zstd_level > 19 || c->zstd_level == 0) {
        e8c_msg(msg, ms, "config.zstd_level %d: must be in [-7, 19], not 0", c->zstd_level);
        return E8C_ERR_CONFIG;
    }
    return 0;
}

int64_t e8c_fingerprint_validate(const e8c_fingerprint *fp, char *msg, size_t ms)
{
    e8c_msg(msg, ms, "ok");
    if (!fp) { e8c_msg(msg, ms, "fingerprint is NULL"); return E8C_ERR_ARG; }
    const void *nul = memchr(fp->model_id, 0, sizeof fp->model_id);
    if (!nul || fp->model_id[0] == 0) {
        e8c_msg(msg, ms, "model_id must be non-empty and NUL-terminated");
        return E8C_ERR_ARG;
    }
    for (size_t i = strlen(fp->model_id); i < sizeof fp->model_id; i++)
        if (fp->model_id[i]) { e8c_msg(msg, ms, "model_id: bytes after NUL must be 0"); return E8C_ERR_ARG; }
    if (fp->n_layers == 0 || fp->n_layers > E8C_MAX_LAYERS || fp->n_kv_heads == 0 ||
        fp->n_kv_heads > E8C_MAX_KV_HEADS) {
        e8c_msg(msg, ms, "n_layers %u / n_kv_heads %u: must be in [1, %u] / [1, %u]",
                fp->n_layers, fp->n_kv_heads, E8C_MAX_LAYERS, E8C_MAX_KV_HEADS);
        return E8C_ERR_LIMIT;
    }
    if (fp->head_dim < 8 || fp->head_dim % 8 || fp->head_dim > E8C_MAX_HEAD_DIM) {
        e8c_msg(msg, ms, "head_dim %u: must be a multiple of 8 in [8, %u]", fp->head_dim,
                E8C_MAX_HEAD_DIM);
        return E8C_ERR_HEAD_DIM;
    }
    if (e8c_dtype_size((e8c_dtype)fp->src_dtype) == 0) {
        e8c_msg(msg, ms, "src_dtype %u: must be fp16 (1), bf16 (2) or fp32 (3)", fp->src_dtype);
        return E8C_ERR_DTYPE;
    }
    int64_t r = rope_validate(fp, msg, ms);
    return r ? r : config_validate(fp, msg, ms);
}

/* ----------------------------------------------------- serialization */

typedef struct wbuf { uint8_t *p; size_t cap, len; } wbuf;

static void w_field(wbuf *w, uint8_t tag, const void *v, size_t n)
{
    if (w->len + 5 + n <= w->cap && w->p) {
        w->p[w->len] = tag;
        e8c_put32(w->p + w->len + 1, (uint32_t)n);
        if (n) memcpy(w->p + w->len + 5, v, n);
    }
    w->len += 5 + n;
}
static void w_u32(wbuf *w, uint8_t tag, uint32_t v) { uint8_t b[4]; e8c_put32(b, v); w_field(w, tag, b, 4); }
static void w_u64(wbuf *w, uint8_t tag, uint64_t v) { uint8_t b[8]; e8c_put64(b, v); w_field(w, tag, b, 8); }
static void w_f64(wbuf *w, uint8_t tag, double v)
{
    uint64_t u;
    if (v == 0) v = 0; /* -0.0 -> +0.0 */
    memcpy(&u, &v, 8);
    w_u64(w, tag, u);
}
static void w_f32s(wbuf *w, uint8_t tag, const float *v, uint32_t n)
{
    uint8_t b[4 * E8C_MAX_ROPE_FACTORS];
    for (uint32_t i = 0; i < n; i++) {
        float f = v[i] == 0 ? 0.0f : v[i];
        uint32_t u;
        memcpy(&u, &f, 4);
        e8c_put32(b + 4 * i, u);
    }
    w_field(w, tag, b, 4 * (size_t)n);
}

static void fp_write(const e8c_fingerprint *fp, wbuf *w)
{
    const e8c_rope *r = &fp->rope;
    const e8c_config *c = &fp->config;
    /* format 1 (E8C_ENTROPY_V1) has no field 43: its bytes, and so its id,
     * are exactly those of version-1 libraries */
    int v1 = c->entropy == E8C_ENTROPY_V1;
    w_u32(w, 0, v1 ? 1 : 2);
    w_field(w, 1, fp->model_id, strlen(fp->model_id));
    w_u32(w, 2, fp->n_layers); w_u32(w, 3, fp->n_kv_heads);
    w_u32(w, 4, fp->head_dim); w_u32(w, 5, fp->src_dtype);
    w_u32(w, 16, r->type); w_u32(w, 17, r->layout);
    w_u32(w, 18, r->rotary_dim); w_u32(w, 19, r->original_max_pos);
    w_f64(w, 20, r->theta); w_f64(w, 21, r->factor);
    w_f64(w, 22, r->low_freq_factor); w_f64(w, 23, r->high_freq_factor);
    w_f64(w, 24, r->beta_fast); w_f64(w, 25, r->beta_slow);
    w_f64(w, 26, r->attention_factor); w_u32(w, 27, r->yarn_no_truncate);
    w_f32s(w, 28, r->short_factor, r->n_longrope);
    w_f32s(w, 29, r->long_factor, r->n_longrope);
    w_field(w, 32, c->preset, strlen(c->preset));
    w_f32s(w, 33, &c->k_step, 1); w_f32s(w, 34, &c->v_step, 1);
    w_u32(w, 35, c->protect_first); w_u32(w, 36, c->protect_last);
    uint8_t mask[8 * (E8C_MAX_LAYERS / 64)];
    for (unsigned i = 0; i < E8C_MAX_LAYERS / 64; i++) e8c_put64(mask + 8 * i, c->protect_mask[i]);
    w_field(w, 37, mask, sizeof mask);
    w_u32(w, 38, c->sink_tokens); w_u32(w, 39, c->recent_tokens);
    w_u32(w, 40, c->decorrelation); w_u32(w, 41, (uint32_t)c->zstd_level);
    w_u64(w, 42, c->hadamard_seed);
    if (!v1) w_u32(w, 43, c->entropy);
}

int64_t e8c_fingerprint_serialize(const e8c_fingerprint *fp, void *buf, size_t size)
{
    int64_t r = e8c_fingerprint_validate(fp, NULL, 0);
    if (r) return r;
    wbuf w = {NULL, 0, 0};
    fp_write(fp, &w);
    if (w.len > size || !buf) return size == 0 && !buf ? (int64_t)w.len : E8C_ERR_DST_SIZE;
    wbuf w2 = {buf, size, 0};
    fp_write(fp, &w2);
    return (int64_t)w2.len;
}

typedef struct rbuf { const uint8_t *p; size_t len, off; int bad; } rbuf;

/* Reads the next field; it must have this tag, and a length in [lo, hi]. */
static const uint8_t *r_field(rbuf *r, uint8_t tag, size_t lo, size_t hi, size_t *n)
{
    if (r->bad || r->len - r->off < 5 || r->p[r->off] != tag) { r->bad = 1; return NULL; }
    size_t k = e8c_get32(r->p + r->off + 1);
    if (k < lo || k > hi || r->len - r->off - 5 < k) { r->bad = 1; return NULL; }
    const uint8_t *v = r->p + r->off + 5;
    r->off += 5 + k;
    *n = k;
    return v;
}
static uint32_t r_u32(rbuf *r, uint8_t tag) { size_t n; const uint8_t *v = r_field(r, tag, 4, 4, &n); return v ? e8c_get32(v) : 0; }
static uint64_t r_u64(rbuf *r, uint8_t tag) { size_t n; const uint8_t *v = r_field(r, tag, 8, 8, &n); return v ? e8c_get64(v) : 0; }
static double r_f64(rbuf *r, uint8_t tag) { uint64_t u = r_u64(r, tag); double d; memcpy(&d, &u, 8); return d; }
static uint32_t r_f32s(rbuf *r, uint8_t tag, float *out, uint32_t maxn)
{
    size_t n;
    const uint8_t *v = r_field(r, tag, 0, 4 * (size_t)maxn, &n);
    if (!v || n % 4) { r->bad = 1; return 0; }
    for (size_t i = 0; i < n / 4; i++) { uint32_t u = e8c_get32(v + 4 * i); memcpy(&out[i], &u, 4); }
    return (uint32_t)(n / 4);
}
static void r_str(rbuf *r, uint8_t tag, char *out, size_t cap)
{
    size_t n;
    const uint8_t *v = r_field(r, tag, 0, cap - 1, &n);
    if (!v) return;
    if (memchr(v, 0, n)) { r->bad = 1; return; }
    memcpy(out, v, n);
}

int64_t e8c_fingerprint_parse(const void *buf, size_t size, e8c_fingerprint *fp)
{
    if (!buf || !fp) return E8C_ERR_ARG;
    memset(fp, 0, sizeof *fp);
    rbuf r = {buf, size, 0, 0};
    e8c_rope *ro = &fp->rope;
    e8c_config *c = &fp->config;
    uint32_t format = r_u32(&r, 0);
    if (format != 1 && format != 2) return r.bad ? E8C_ERR_CORRUPT : E8C_ERR_VERSION;
    r_str(&r, 1, fp->model_id, sizeof fp->model_id);
    fp->n_layers = r_u32(&r, 2); fp->n_kv_heads = r_u32(&r, 3);
    fp->head_dim = r_u32(&r, 4); fp->src_dtype = r_u32(&r, 5);
    ro->type = r_u32(&r, 16); ro->layout = r_u32(&r, 17);
    ro->rotary_dim = r_u32(&r, 18); ro->original_max_pos = r_u32(&r, 19);
    ro->theta = r_f64(&r, 20); ro->factor = r_f64(&r, 21);
    ro->low_freq_factor = r_f64(&r, 22); ro->high_freq_factor = r_f64(&r, 23);
    ro->beta_fast = r_f64(&r, 24); ro->beta_slow = r_f64(&r, 25);
    ro->attention_factor = r_f64(&r, 26); ro->yarn_no_truncate = r_u32(&r, 27);
    ro->n_longrope = r_f32s(&r, 28, ro->short_factor, E8C_MAX_ROPE_FACTORS);
    if (r_f32s(&r, 29, ro->long_factor, E8C_MAX_ROPE_FACTORS) != ro->n_longrope) r.bad = 1;
    r_str(&r, 32, c->preset, sizeof c->preset);
    float st[1] = {0};
    r_f32s(&r, 33, st, 1); c->k_step = st[0];
    st[0] = 0;
    r_f32s(&r, 34, st, 1); c->v_step = st[0];
    c->protect_first = r_u32(&r, 35); c->protect_last = r_u32(&r, 36);
    size_t n;
    const uint8_t *m = r_field(&r, 37, 8 * (E8C_MAX_LAYERS / 64), 8 * (E8C_MAX_LAYERS / 64), &n);
    for (unsigned i = 0; m && i < E8C_MAX_LAYERS / 64; i++) c->protect_mask[i] = e8c_get64(m + 8 * i);
    c->sink_tokens = r_u32(&r, 38); c->recent_tokens = r_u32(&r, 39);
    c->decorrelation = r_u32(&r, 40); c->zstd_level = (int32_t)r_u32(&r, 41);
    c->hadamard_seed = r_u64(&r, 42);
    if (format == 1) c->entropy = E8C_ENTROPY_V1;
    else if ((c->entropy = r_u32(&r, 43)) == E8C_ENTROPY_V1) r.bad = 1; /* not canonical */
    if (r.bad || r.off != size) return E8C_ERR_CORRUPT;
    int64_t v = e8c_fingerprint_validate(fp, NULL, 0);
    return v ? v : 0;
}

int64_t e8c_fingerprint_id(const e8c_fingerprint *fp, uint8_t id[E8C_ID_SIZE])
{
    if (!id) return E8C_ERR_ARG;
    int64_t n = e8c_fingerprint_serialize(fp, NULL, 0);
    if (n < 0) return n;
    uint8_t buf[8192];
    if ((size_t)n > sizeof buf) return E8C_ERR_LIMIT;
    e8c_fingerprint_serialize(fp, buf, sizeof buf);
    unsigned int len = 0;
    if (!EVP_Digest(buf, (size_t)n, id, &len, EVP_sha256(), NULL) || len != E8C_ID_SIZE)
        return E8C_ERR_NOMEM;
    return 0;
}
