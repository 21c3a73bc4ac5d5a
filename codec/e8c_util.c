/*
 * e8c_util.c: error space, dtype conversions, CRC32C, version.
 *
 * Conversions follow FORMAT.md section 1: fp16/bf16 widen exactly to fp32;
 * fp32 narrows with round-to-nearest-even; fp16 output saturates.
 */
#include <isa-l/crc.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "codec/e8c_internal.h"

static const struct { int64_t code; const char *name, *text; } e8c_errs[] = {
    {E8C_OK, "E8C_OK", "success"},
    {E8C_ERR_ARG, "E8C_ERR_ARG", "invalid argument (NULL, bad enum or flag)"},
    {E8C_ERR_DTYPE, "E8C_ERR_DTYPE", "dtype is not fp16, bf16 or fp32"},
    {E8C_ERR_SHAPE, "E8C_ERR_SHAPE", "tensor shape or strides do not fit the model"},
    {E8C_ERR_HEAD_DIM, "E8C_ERR_HEAD_DIM", "head_dim must be a multiple of 8 in [8, 512]"},
    {E8C_ERR_ROPE, "E8C_ERR_ROPE", "unknown or incomplete RoPE description"},
    {E8C_ERR_CONFIG, "E8C_ERR_CONFIG", "invalid codec configuration"},
    {E8C_ERR_NONFINITE, "E8C_ERR_NONFINITE", "NaN or inf in the input"},
    {E8C_ERR_RANGE, "E8C_ERR_RANGE", "value outside the codec's range"},
    {E8C_ERR_DST_SIZE, "E8C_ERR_DST_SIZE", "output buffer too small"},
    {E8C_ERR_TRUNCATED, "E8C_ERR_TRUNCATED", "frame or chunk truncated"},
    {E8C_ERR_MAGIC, "E8C_ERR_MAGIC", "not an e8kv frame or chunk (bad magic)"},
    {E8C_ERR_VERSION, "E8C_ERR_VERSION", "unsupported format version"},
    {E8C_ERR_CHECKSUM, "E8C_ERR_CHECKSUM", "checksum mismatch: bytes corrupted"},
    {E8C_ERR_CORRUPT, "E8C_ERR_CORRUPT", "corrupt frame: inconsistent header or stream"},
    {E8C_ERR_FINGERPRINT, "E8C_ERR_FINGERPRINT", "frame belongs to another model fingerprint"},
    {E8C_ERR_NOMEM, "E8C_ERR_NOMEM", "out of memory"},
    {E8C_ERR_ZSTD, "E8C_ERR_ZSTD", "zstd compression failed"},
    {E8C_ERR_LIMIT, "E8C_ERR_LIMIT", "size above the codec's limits"},
    {E8C_ERR_POSITION, "E8C_ERR_POSITION", "token positions out of range"},
    {E8C_ERR_LAYER_RANGE, "E8C_ERR_LAYER_RANGE", "layer range empty or beyond n_layers"},
    {E8C_ERR_PRESET, "E8C_ERR_PRESET", "unknown preset name"},
};

int e8c_is_error(int64_t r) { return r < 0; }

const char *e8c_error_name(int64_t r)
{
    for (size_t i = 0; i < sizeof e8c_errs / sizeof e8c_errs[0]; i++)
        if (e8c_errs[i].code == r) return e8c_errs[i].name;
    return r >= 0 ? "E8C_OK" : "E8C_ERR_UNKNOWN";
}

const char *e8c_error_string(int64_t r)
{
    for (size_t i = 0; i < sizeof e8c_errs / sizeof e8c_errs[0]; i++)
        if (e8c_errs[i].code == r) return e8c_errs[i].text;
    return r >= 0 ? "success" : "unknown error";
}

const char *e8c_version(void) { return "e8codec 2.0 (writes format 2; reads format 1 and 2)"; }

void e8c_msg(char *msg, size_t size, const char *fmt, ...)
{
    if (!msg || size == 0) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, size, fmt, ap);
    va_end(ap);
}

int64_t e8c_fail(e8c_ctx *ctx, int64_t code, const char *fmt, ...)
{
    if (ctx) {
        va_list ap;
        va_start(ap, fmt);
        int k = snprintf(ctx->err, sizeof ctx->err, "%s: ", e8c_error_name(code));
        if (k > 0 && (size_t)k < sizeof ctx->err)
            vsnprintf(ctx->err + k, sizeof ctx->err - (size_t)k, fmt, ap);
        va_end(ap);
    }
    return code;
}

size_t e8c_dtype_size(e8c_dtype dtype)
{
    switch (dtype) {
    case E8C_DTYPE_F16: case E8C_DTYPE_BF16: return 2;
    case E8C_DTYPE_F32: return 4;
    }
    return 0;
}

static uint32_t f2u(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static float u2f(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

float e8c_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff;
    if (exp == 0x1f) return u2f(sign | 0x7f800000u | (man << 13));
    if (exp == 0) { /* zero or subnormal: man * 2^-24, exact in fp32 */
        float v = (float)man * 0x1p-24f;
        return sign ? -v : v;
    }
    return u2f(sign | ((exp + 112) << 23) | (man << 13));
}

/* RNE narrowing; returns bits with inf on overflow (caller decides). */
static uint16_t f32_to_f16_rne(float f)
{
    uint32_t u = f2u(f), sign = (u >> 16) & 0x8000;
    uint32_t a = u & 0x7fffffffu;
    if (a >= 0x7f800000u) return (uint16_t)(sign | 0x7c00 | (a > 0x7f800000u ? 0x200 : 0));
    if (a >= 0x477ff000u) return (uint16_t)(sign | 0x7c00); /* >= 65520: rounds to inf */
    if (a < 0x38800000u) { /* below 2^-14: fp16 subnormal or zero */
        /* value * 2^24 rounded to nearest even integer, exact via fp32 rint */
        float v = rintf(u2f(a) * 0x1p24f);
        return (uint16_t)(sign | (uint32_t)v);
    }
    uint32_t r = a + 0xfffu + ((a >> 13) & 1u);
    return (uint16_t)(sign | ((r - 0x38000000u) >> 13));
}

uint16_t e8c_f32_to_f16_sat(float f)
{
    uint16_t h = f32_to_f16_rne(f);
    if ((h & 0x7fff) == 0x7c00) h = (uint16_t)((h & 0x8000) | 0x7bff);
    return h;
}

int e8c_f32_to_f16_checked(float f, uint16_t *out)
{
    uint16_t h = f32_to_f16_rne(f);
    if ((h & 0x7c00) == 0x7c00) return -1;
    *out = h;
    return 0;
}

float e8c_bf16_to_f32(uint16_t b) { return u2f((uint32_t)b << 16); }

uint16_t e8c_f32_to_bf16(float f)
{
    uint32_t u = f2u(f);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

float e8c_load(const void *base, uint32_t dtype, int64_t idx)
{
    switch (dtype) {
    case E8C_DTYPE_F16: return e8c_f16_to_f32(((const uint16_t *)base)[idx]);
    case E8C_DTYPE_BF16: return e8c_bf16_to_f32(((const uint16_t *)base)[idx]);
    default: return ((const float *)base)[idx];
    }
}

void e8c_store(void *base, uint32_t dtype, int64_t idx, float v)
{
    switch (dtype) {
    case E8C_DTYPE_F16: ((uint16_t *)base)[idx] = e8c_f32_to_f16_sat(v); break;
    case E8C_DTYPE_BF16: ((uint16_t *)base)[idx] = e8c_f32_to_bf16(v); break;
    default: ((float *)base)[idx] = v; break;
    }
}

uint32_t e8c_crc32c(const void *p, size_t n)
{
    uint32_t c = 0xffffffffu;
    const uint8_t *b = p;
    while (n > 0) { /* isa-l takes an int length */
        size_t k = n > (1u << 30) ? (1u << 30) : n;
        c = crc32_iscsi((unsigned char *)(uintptr_t)b, (int)k, c);
        b += k;
        n -= k;
    }
    return c ^ 0xffffffffu;
}

e8c_tensor e8c_tensor_contiguous(void *data, e8c_dtype dtype, uint32_t n_tokens,
                                 uint32_t head_dim)
{
    e8c_tensor t = {data, (uint32_t)dtype, (int64_t)n_tokens * head_dim,
                    head_dim, 1};
    return t;
}
