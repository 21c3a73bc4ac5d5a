/*
 * e8codec.h: libe8codec, the E8 lattice codec for the attention KV cache.
 *
 * WHAT IT IS
 *   Lossy, training-free compression of one model's KV cache.  For every
 *   head vector (head_dim elements of one KV head at one token) the encoder:
 *     1. keys only: removes RoPE exactly (every variant the model fingerprint
 *        can name), so the stored vector does not depend on its position;
 *     2. applies a randomized, orthonormal Hadamard rotation (seed stored);
 *     3. computes one scale per vector (RMS x the preset's step size, bf16);
 *     4. finds the nearest point of the E8 lattice (Conway & Sloane,
 *        "Fast quantizing and decoding algorithms for lattice quantizers and
 *        codes", IEEE Trans. IT 28(2), 1982; and "Sphere Packings, Lattices
 *        and Groups", ch. 20): both cosets D8 and D8+1/2, the parity fix
 *        re-rounds the coordinate with the largest rounding residual;
 *     5. writes coset bits and integer coordinates (with an escape for large
 *        ones, never clamped), optionally decorrelated across tokens, then
 *        entropy-codes them (config.entropy: 32-lane interleaved rANS by
 *        default, "rans32"; or the best of zstd / rANS / rans32), then
 *        CRC32C per stream and over every header.
 *   Decoding inverts 5..1 and re-applies RoPE at the stored positions or at
 *   new positions.  The byte format is codec/FORMAT.md (version 2; version 1
 *   frames and chunks are read too).
 *
 * UNITS AND WORDS
 *   element   one scalar of K or V.  bpe = stored bytes * 8 / elements, with
 *             elements = 2 * n_layers * n_kv_heads * head_dim * n_tokens for a
 *             chunk (every header, scale, table and raw token counted).
 *   position  absolute token position in the sequence (0-based), as the
 *             engine's RoPE saw it.
 *   frame     the self-describing bytes of one layer's K or one layer's V.
 *   chunk     n_tokens consecutive tokens, all layers, K and V, as one byte
 *             string: a header, the model fingerprint, an index, then one
 *             frame per (layer, K/V).  A layer range decodes without
 *             touching (or checksumming) the other layers' frames.
 *   raw chunk layout (what the daemon receives for raw uploads and what
 *             e8c_chunk_decode writes):
 *               [n_layers][2 (K then V)][n_kv_heads][n_tokens][head_dim],
 *             contiguous, row-major, in fp16, bf16 or fp32.
 *
 * RETURN VALUES AND ERRORS
 *   Every function that can fail returns int64_t: >= 0 is success (a byte
 *   count where the function says so, else 0); < 0 is one of the stable
 *   E8C_ERR_* codes below.  e8c_is_error() and e8c_error_name() interpret
 *   them.  Calls that take an e8c_ctx leave a one-line human message
 *   (which argument, which value, which limit) in e8c_ctx_last_error().
 *   A failed call writes nothing the caller can mistake for output: an
 *   encoder's dst content is unspecified and its return is the error; a
 *   decoder's dst content is unspecified.
 *
 * MEMORY
 *   The caller owns every input and output buffer.  Ask for sizes first
 *   (e8c_frame_max_size, e8c_chunk_max_size, e8c_chunk_raw_size).  An
 *   e8c_ctx owns a workspace; e8c_ctx_reserve() sizes it up front, after
 *   which encode/decode calls of at most that many tokens allocate nothing.
 *   A call needing more tokens grows the workspace once (malloc), and that
 *   growth is the only allocation outside create/reserve.
 *
 * THREAD SAFETY
 *   An e8c_ctx is used by one thread at a time (it carries the workspace and
 *   the last error).  Distinct contexts are independent, so use one per
 *   thread.  Functions without an e8c_ctx argument are thread-safe.
 *
 * DETERMINISM
 *   For the same input and fingerprint, every backend (the plain reference,
 *   the vectorized CPU path, the CUDA kernels in codec/cuda/) produces the
 *   same frame bytes (entropy best and v1 use zstd: the same libzstd version
 *   too; the CUDA codec supports rans32 only).  FORMAT.md fixes every
 *   floating-point operation and its order for that reason.
 *
 * PERFORMANCE (make bench-codec QUICK=1, chunks of 256 tokens, fp16 in/out,
 * one core of a shared AMD EPYC (Zen 3, AVX2) VM, thread CPU time;
 * 2026-11-29, load average 12-16 on 2 cores, so +-20 %):
 *   K3V2, entropy rans32 (three runs): encode 0.23-0.33 GB/s, decode
 *   0.33-0.52 GB/s of fp16, i.e. 1.2-1.6 % / 1.7-2.5 % of memcpy of the
 *   same buffers in the same run (17-21 GB/s).  Version 1 (zstd + 2-state rANS, scalar E8)
 *   measured 0.07-0.10 / 0.13-0.21 GB/s on the same machine.  Where the
 *   time goes (perf, K3V2): encode: rans32 encoding ~30 % (the K = 1
 *   streams are one dependency chain), E8 search ~11 %, Hadamard ~10 %,
 *   per-head layout ~11 %; decode: rans32 decoding ~45 %, Hadamard and
 *   output ~25 %.  The goal of 10 % of memcpy is not reached.
 *   The E8 search runs 8 blocks at once (AVX2, branch-free); the layout
 *   and its inverse are AVX2 passes; rans32 uses exact reciprocals
 *   (encoder) and split slot tables with branch-free renormalization
 *   (decoder).  The reference backend is several times slower.
 *
 * LIMITS (inputs beyond them are refused with E8C_ERR_LIMIT or
 * E8C_ERR_HEAD_DIM, frames claiming them with E8C_ERR_CORRUPT)
 */
#ifndef E8CODEC_H
#define E8CODEC_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define E8C_FORMAT_VERSION      2u     /* version this library writes
                                          (1 for E8C_ENTROPY_V1 configs) */
#define E8C_FORMAT_VERSION_MIN  1u     /* oldest version it reads */
#define E8C_MAX_LAYERS          512u   /* n_layers */
#define E8C_MAX_KV_HEADS        256u   /* n_kv_heads */
#define E8C_MAX_HEAD_DIM        512u   /* head_dim: a multiple of 8, 8..512 */
#define E8C_MAX_TOKENS          65536u /* tokens in one frame or chunk */
#define E8C_MAX_POSITION        0x7fffffffu /* last token position + 1 <= this */
#define E8C_MODEL_ID_MAX        128u   /* bytes in model_id, including NUL */
#define E8C_PRESET_NAME_MAX     16u    /* bytes in preset name, including NUL */
#define E8C_MAX_ROPE_FACTORS    (E8C_MAX_HEAD_DIM / 2) /* longrope factors */
#define E8C_ID_SIZE             32u    /* SHA-256 fingerprint id */

/* ------------------------------------------------------------------ errors */

enum e8c_error {
    E8C_OK              =   0,
    E8C_ERR_ARG         =  -1, /* NULL pointer, bad enum value, bad flag */
    E8C_ERR_DTYPE       =  -2, /* dtype not fp16/bf16/fp32 */
    E8C_ERR_SHAPE       =  -3, /* tensor shape/strides do not fit the model */
    E8C_ERR_HEAD_DIM    =  -4, /* head_dim not a multiple of 8 in [8, 512] */
    E8C_ERR_ROPE        =  -5, /* unknown or incomplete RoPE description */
    E8C_ERR_CONFIG      =  -6, /* bad codec configuration (steps, layers...) */
    E8C_ERR_NONFINITE   =  -7, /* NaN or inf in the input tensor */
    E8C_ERR_RANGE       =  -8, /* finite input outside the codec's range
                                  (|x| > 2^64), or a raw-kept value that
                                  does not fit the model's source dtype */
    E8C_ERR_DST_SIZE    =  -9, /* output buffer too small: ask for sizes */
    E8C_ERR_TRUNCATED   = -10, /* frame/chunk shorter than its header says */
    E8C_ERR_MAGIC       = -11, /* not an e8kv frame/chunk */
    E8C_ERR_VERSION     = -12, /* format version this library cannot read */
    E8C_ERR_CHECKSUM    = -13, /* a CRC32C did not match: bytes corrupted */
    E8C_ERR_CORRUPT     = -14, /* header fields inconsistent or out of limits,
                                  or a stream that does not decode */
    E8C_ERR_FINGERPRINT = -15, /* frame/chunk belongs to another fingerprint */
    E8C_ERR_NOMEM       = -16, /* allocation failed */
    E8C_ERR_ZSTD        = -17, /* zstd refused to compress (should not happen) */
    E8C_ERR_LIMIT       = -18, /* a size above the E8C_MAX_* limits */
    E8C_ERR_POSITION    = -19, /* positions outside [0, E8C_MAX_POSITION] */
    E8C_ERR_LAYER_RANGE = -20, /* layer range empty or beyond n_layers */
    E8C_ERR_PRESET      = -21, /* unknown preset name */
};

/* 1 if r is an E8C_ERR_* code, else 0. */
int e8c_is_error(int64_t r);
/* Stable name of a code ("E8C_ERR_CHECKSUM"); "E8C_ERR_UNKNOWN" otherwise. */
const char *e8c_error_name(int64_t r);
/* One-line description of a code ("checksum mismatch: bytes corrupted"). */
const char *e8c_error_string(int64_t r);

/* ------------------------------------------------------------------ dtypes */

typedef enum e8c_dtype {
    E8C_DTYPE_F16  = 1, /* IEEE binary16 */
    E8C_DTYPE_BF16 = 2, /* bfloat16 */
    E8C_DTYPE_F32  = 3, /* IEEE binary32 */
} e8c_dtype;

/* Bytes per element of a dtype, 0 if unknown. */
size_t e8c_dtype_size(e8c_dtype dtype);

/* -------------------------------------------------------------------- RoPE */

/* RoPE variants, with the meaning HuggingFace transformers gives them
 * (modeling_rope_utils.py, rope_type).  E8C_ROPE_UNSET is refused: a
 * missing description is never taken for plain RoPE. */
typedef enum e8c_rope_type {
    E8C_ROPE_UNSET    = 0, /* refused */
    E8C_ROPE_NONE     = 1, /* the model has no rotary embedding (keys kept) */
    E8C_ROPE_DEFAULT  = 2, /* theta only */
    E8C_ROPE_LINEAR   = 3, /* + factor (position interpolation) */
    E8C_ROPE_DYNAMIC  = 4, /* + factor, original_max_pos (dynamic NTK) */
    E8C_ROPE_YARN     = 5, /* + factor, original_max_pos, beta_fast,
                              beta_slow, attention_factor (mscale) */
    E8C_ROPE_LLAMA3   = 6, /* + factor, original_max_pos, low_freq_factor,
                              high_freq_factor */
    E8C_ROPE_LONGROPE = 7, /* + original_max_pos, short_factor[], long_factor[],
                              attention_factor */
} e8c_rope_type;

typedef enum e8c_rope_layout {
    E8C_ROPE_LAYOUT_UNSET       = 0, /* refused (except with E8C_ROPE_NONE) */
    E8C_ROPE_LAYOUT_SPLIT_HALF  = 1, /* GPT-NeoX / HF Llama rotate_half:
                                        pairs (i, i + rotary_dim/2) */
    E8C_ROPE_LAYOUT_INTERLEAVED = 2, /* GPT-J / Meta original:
                                        pairs (2i, 2i + 1) */
} e8c_rope_layout;

/* Full RoPE description.  Fields a variant does not use must be 0.
 * Frequencies: inv_freq[i], i in [0, rotary_dim/2), as FORMAT.md section
 * "RoPE" defines per variant (HF formulas, computed in double, rounded to
 * fp32); angle = fp32(inv_freq[i] * fp32(position)).
 * attention_factor (yarn, longrope) multiplies cos and sin uniformly in the
 * engine; a uniform gain commutes with the rotation and is absorbed by the
 * per-vector scale, so it identifies the model but does not enter RoPE
 * removal. */
typedef struct e8c_rope {
    uint32_t type;             /* e8c_rope_type */
    uint32_t layout;           /* e8c_rope_layout */
    uint32_t rotary_dim;       /* rotated dims [0, rotary_dim): even, >= 2,
                                  <= head_dim (partial rotary if <) */
    uint32_t original_max_pos; /* original_max_position_embeddings (tokens) */
    double   theta;            /* base, > 0 (rope_theta) */
    double   factor;           /* scaling factor (linear, dynamic, yarn,
                                  llama3); > 0 */
    double   low_freq_factor;  /* llama3 */
    double   high_freq_factor; /* llama3, > low_freq_factor */
    double   beta_fast;        /* yarn (HF default 32; must be given) */
    double   beta_slow;        /* yarn (HF default 1; must be given) */
    double   attention_factor; /* yarn, longrope: mscale, > 0, must be given */
    uint32_t yarn_no_truncate; /* yarn: 1 = HF truncate=False (gpt-oss) */
    uint32_t n_longrope;       /* longrope: = rotary_dim / 2 */
    float    short_factor[E8C_MAX_ROPE_FACTORS]; /* longrope, > 0 */
    float    long_factor[E8C_MAX_ROPE_FACTORS];  /* longrope, > 0 */
} e8c_rope;

/* ----------------------------------------------------- codec configuration */

typedef enum e8c_decor {
    E8C_DECOR_AUTO  = 0, /* encoder picks per stream (per KV head): default */
    E8C_DECOR_NONE  = 1, /* coordinates as they are */
    E8C_DECOR_DELTA = 2, /* minus the previous token's coordinates */
    E8C_DECOR_MEAN  = 3, /* minus the per-coordinate mean over the tokens */
} e8c_decor;

/* Entropy coding of a frame's streams (FORMAT.md section 5.2, "Coding of
 * each stream").  Lossless: it changes the bytes and the speed, never the
 * decoded values. */
typedef enum e8c_entropy {
    E8C_ENTROPY_RANS32 = 0, /* default: 32-lane interleaved rANS (coding 3)
                               on the lattice streams, everything else
                               stored; no zstd, one attempt per stream.
                               The CUDA codec writes the same bytes. */
    E8C_ENTROPY_BEST   = 1, /* CPU only: the smallest of stored, zstd, rANS
                               (coding 2) and rans32 (coding 3) per stream;
                               a few % smaller on repetitive KV, several
                               times slower to encode */
    E8C_ENTROPY_V1     = 2, /* legacy: format 1's rule (stored, zstd, rANS),
                               version-1 frames and chunks, and format 1's
                               fingerprint bytes (so fingerprints parsed
                               from version-1 data keep their id) */
} e8c_entropy;

/* What the encoder does.  Everything here is part of the fingerprint. */
typedef struct e8c_config {
    char     preset[E8C_PRESET_NAME_MAX]; /* informative: "K3V2", or "" */
    float    k_step;        /* key lattice step, relative to the vector's RMS
                               after rotation: larger = fewer bits;
                               in [1/64, 16] */
    float    v_step;        /* value lattice step, same units */
    uint32_t protect_first; /* first N layers kept unquantized */
    uint32_t protect_last;  /* last N layers kept unquantized */
    uint64_t protect_mask[E8C_MAX_LAYERS / 64]; /* more protected layers:
                               bit l of word l/64 = layer l */
    uint32_t sink_tokens;   /* tokens at positions < sink_tokens kept raw */
    uint32_t recent_tokens; /* tokens at positions >= seq_len - recent_tokens
                               kept raw (seq_len: see e8c_frame_params) */
    uint32_t decorrelation; /* e8c_decor */
    int32_t  zstd_level;    /* 1..19 (negative fast levels allowed, >= -7) */
    uint64_t hadamard_seed; /* signs of the randomized Hadamard rotation */
    uint32_t entropy;       /* e8c_entropy (format 2; last so that format
                               1 layouts stay a prefix) */
} e8c_config;
/* "Kept raw" / "unquantized" means stored bit-exactly in the model's source
 * dtype (fp16 for an fp16 model, bf16 for a bf16 model), not converted. */

/* ----------------------------------------------------------- fingerprint */

/* What makes KV bytes comparable.  Two caches with different fingerprint
 * ids never mix.  Plain struct, no pointers: copy it freely.  Zero it
 * (memset) before filling so unused fields are 0. */
typedef struct e8c_fingerprint {
    char       model_id[E8C_MODEL_ID_MAX]; /* e.g. "HuggingFaceTB/SmolLM2-
                                              135M-Instruct"; NUL-terminated,
                                              non-empty */
    uint32_t   n_layers;   /* 1..E8C_MAX_LAYERS */
    uint32_t   n_kv_heads; /* 1..E8C_MAX_KV_HEADS (GQA: KV heads, not Q) */
    uint32_t   head_dim;   /* multiple of 8 in [8, E8C_MAX_HEAD_DIM] */
    uint32_t   src_dtype;  /* e8c_dtype the engine keeps its KV cache in */
    e8c_rope   rope;
    e8c_config config;
} e8c_fingerprint;

/* Checks every field (ranges, RoPE completeness for its type, head_dim a
 * multiple of 8, steps in range, ...).  Returns 0 or E8C_ERR_HEAD_DIM /
 * E8C_ERR_ROPE / E8C_ERR_CONFIG / E8C_ERR_DTYPE / E8C_ERR_LIMIT /
 * E8C_ERR_ARG; if msg is not NULL, writes a one-line reason (NUL-terminated,
 * at most msg_size bytes). */
int64_t e8c_fingerprint_validate(const e8c_fingerprint *fp, char *msg,
                                 size_t msg_size);

/* Fingerprint id: SHA-256 (OpenSSL) of the canonical serialization below.
 * Validates first; returns 0 or the validation error. */
int64_t e8c_fingerprint_id(const e8c_fingerprint *fp,
                           uint8_t id[E8C_ID_SIZE]);

/* Canonical serialization (FORMAT.md "Fingerprint"): a sequence of fields,
 * each tag (u8), length (u32 LE), value; fixed order; only meaningful
 * fields.  Returns the size in bytes, writing it to buf if buf_size is
 * enough (buf may be NULL with buf_size 0 to ask the size), else
 * E8C_ERR_DST_SIZE.  Validates first. */
int64_t e8c_fingerprint_serialize(const e8c_fingerprint *fp, void *buf,
                                  size_t buf_size);
/* Inverse: parses exactly size bytes, then validates.  E8C_ERR_CORRUPT on
 * malformed bytes, a validation error on a bad description. */
int64_t e8c_fingerprint_parse(const void *buf, size_t size,
                              e8c_fingerprint *fp);

/* ---------------------------------------------------------------- presets */

/* Named presets.  Each sets config.preset, k_step, v_step; nothing else
 * (policies, decorrelation, zstd level and seed are left as they are).
 * Names: "K4V4", "K4V3", "K4V2", "K3V3", "K3V2", "K2V2".  "Kb" means the
 * key step is chosen so that keys cost about b bits per element on
 * Gaussian data, all bytes counted (FORMAT.md "Presets" lists the steps and
 * measured bpe).  The default is E8C_PRESET_DEFAULT. */
#define E8C_PRESET_DEFAULT "K3V2"
int64_t e8c_preset_apply(const char *name, e8c_config *cfg);
/* The i-th preset name (i from 0), NULL past the end. */
const char *e8c_preset_name(unsigned i);

/* Fills cfg with the defaults: preset E8C_PRESET_DEFAULT, no protected
 * layers, sink_tokens 1 (the attention sink, token 0, kept raw: on
 * SmolLM2-135M at K3V2 it halves the KL divergence for about 16 bits per
 * KV element of one token), no recent window, decorrelation AUTO, zstd
 * level 1 (used only by E8C_ENTROPY_BEST / _V1), hadamard_seed
 * 0x6538_6b76_5f76_3031 ("e8kv_v01"), entropy E8C_ENTROPY_RANS32. */
void e8c_config_default(e8c_config *cfg);

/* ---------------------------------------------------------------- context */

typedef struct e8c_ctx e8c_ctx;

/* Creates a context for one fingerprint (validated and copied; its id is
 * computed once).  Returns NULL on error with *err set (err may be NULL). */
e8c_ctx *e8c_ctx_create(const e8c_fingerprint *fp, int64_t *err);
/* Frees; NULL is a no-op. */
void e8c_ctx_free(e8c_ctx *ctx);
/* Sizes the workspace for frames and chunks of up to max_tokens tokens, so
 * later calls do not allocate.  0 or E8C_ERR_NOMEM / E8C_ERR_LIMIT. */
int64_t e8c_ctx_reserve(e8c_ctx *ctx, uint32_t max_tokens);
const e8c_fingerprint *e8c_ctx_fingerprint(const e8c_ctx *ctx);
const uint8_t *e8c_ctx_id(const e8c_ctx *ctx); /* E8C_ID_SIZE bytes */
/* Message of the last failed call on this ctx ("" if none). Valid until the
 * next call on ctx. */
const char *e8c_ctx_last_error(const e8c_ctx *ctx);

typedef enum e8c_backend {
    E8C_BACKEND_AUTO = 0, /* fastest the CPU supports (AVX2 or scalar) */
    E8C_BACKEND_REF  = 1, /* the plain reference, FORMAT.md line by line */
    E8C_BACKEND_FAST_SCALAR = 2, /* fast path without SIMD */
} e8c_backend;
/* Picks the implementation (tests compare them).  Output bytes are the
 * same for all.  Returns 0 or E8C_ERR_ARG. */
int64_t e8c_ctx_set_backend(e8c_ctx *ctx, e8c_backend backend);

/* ------------------------------------------------------- per-layer frames */

typedef enum e8c_kind { E8C_K = 0, E8C_V = 1 } e8c_kind;

/* A strided tensor [n_kv_heads][n_tokens][head_dim]; strides in ELEMENTS
 * (not bytes), may be any non-negative values (views of a larger cache
 * such as [tokens][heads][dim] are fine); n_kv_heads and head_dim come from
 * the fingerprint, n_tokens from the call. */
typedef struct e8c_tensor {
    void     *data;        /* element [0][0][0] (const for inputs) */
    uint32_t  dtype;       /* e8c_dtype */
    int64_t   stride_head; /* elements between heads */
    int64_t   stride_token;/* elements between tokens */
    int64_t   stride_dim;  /* elements between head_dim elements (1) */
} e8c_tensor;

/* Fills a tensor descriptor for a contiguous [n_kv_heads][n_tokens][head_dim]
 * buffer. */
e8c_tensor e8c_tensor_contiguous(void *data, e8c_dtype dtype,
                                 uint32_t n_tokens, uint32_t head_dim);

/* Where the tokens sit in the sequence.  Policies need it:
 *   sinks:  tokens at positions p < config.sink_tokens are kept raw;
 *   recent: tokens at positions p >= seq_len - config.recent_tokens are kept
 *           raw.  A frame is immutable: a chunk encoded while it was recent
 *           keeps its raw tokens (re-encode it to change that).
 * Dynamic NTK and longrope choose frequencies from the sequence length the
 * engine used when it computed the keys (HF: max position + 1 of that
 * forward pass); rope_seq_len gives it.  Exact removal needs all keys of a
 * frame to share it (true within one prefill). */
typedef struct e8c_frame_params {
    uint32_t layer;        /* 0..n_layers-1 */
    uint32_t kind;         /* e8c_kind */
    uint32_t n_tokens;     /* 1..E8C_MAX_TOKENS */
    uint32_t first_pos;    /* position of token 0 */
    uint32_t seq_len;      /* tokens in the sequence at encode time, >=
                              first_pos + n_tokens; 0 = first_pos+n_tokens */
    uint32_t rope_seq_len; /* see above; 0 = seq_len */
} e8c_frame_params;

/* Upper bound of a frame's size in bytes for n_tokens tokens (any content).
 * Returns the bound or an error. */
int64_t e8c_frame_max_size(const e8c_ctx *ctx, uint32_t n_tokens);

/* Encodes one layer's K or V.  src: [n_kv_heads][n_tokens][head_dim] in any
 * dtype (converted numerically).  Returns the frame size in bytes (<= the
 * max size) or E8C_ERR_ARG / _SHAPE / _DTYPE / _NONFINITE / _RANGE /
 * _POSITION / _LIMIT / _DST_SIZE / _NOMEM / _ZSTD. */
int64_t e8c_frame_encode(e8c_ctx *ctx, const e8c_frame_params *p,
                         const e8c_tensor *src, void *dst, size_t dst_size);

/* What a frame header says (after its checks). */
typedef struct e8c_frame_info {
    uint32_t version, kind, layer, method; /* method: 0 raw layer, 1 E8 */
    uint32_t n_kv_heads, head_dim, n_tokens;
    uint32_t first_pos, rope_seq_len;
    uint32_t n_raw_head, n_raw_tail;  /* raw-kept tokens at start / end */
    uint32_t src_dtype;
    uint64_t hadamard_seed;
    uint8_t  id_prefix[8];            /* first 8 bytes of the fingerprint id */
    uint64_t frame_size;              /* bytes of the whole frame */
} e8c_frame_info;

/* Parses a frame and checks its header CRC and every stream's CRC without
 * decoding.  frame_size in info tells how many of the size bytes the frame
 * uses (frames can be concatenated).  0 or E8C_ERR_TRUNCATED / _MAGIC /
 * _VERSION / _CHECKSUM / _CORRUPT. */
int64_t e8c_frame_info_get(const void *frame, size_t size,
                           e8c_frame_info *info);

/* Decode options.  new positions re-apply RoPE on keys at positions
 * new_first_pos + t instead of the stored ones (the stored ones are used
 * for removal); raw-kept keys are re-rotated the same way. */
typedef struct e8c_decode_params {
    uint32_t use_new_pos;      /* 0: restore at stored positions */
    uint32_t new_first_pos;
    uint32_t new_rope_seq_len; /* 0 = the stored rope_seq_len */
} e8c_decode_params;

/* Decodes a frame into dst ([n_kv_heads][n_tokens][head_dim], dst->dtype:
 * numeric conversion, round-to-nearest-even; values beyond fp16's range
 * saturate to +-65504 when decoding into fp16).  n_tokens is the number of
 * tokens dst holds: a frame with another count is refused (E8C_ERR_SHAPE)
 * before anything is written, so a hostile frame cannot write past dst.
 * dp may be NULL.  Checks header and stream CRCs and the fingerprint id
 * prefix against ctx (E8C_ERR_FINGERPRINT).  0 or an error; dst content is
 * unspecified on error. */
int64_t e8c_frame_decode_into(e8c_ctx *ctx, const void *frame, size_t size,
                              const e8c_decode_params *dp,
                              const e8c_tensor *dst, uint32_t n_tokens);
/* Same without the token-count check: dst must hold the frame's n_tokens
 * (read it with e8c_frame_info_get first).  Prefer e8c_frame_decode_into. */
int64_t e8c_frame_decode(e8c_ctx *ctx, const void *frame, size_t size,
                         const e8c_decode_params *dp, const e8c_tensor *dst);

/* ------------------------------------------------------------------ chunks */

typedef struct e8c_chunk_params {
    uint32_t n_tokens;     /* 1..E8C_MAX_TOKENS */
    uint32_t first_pos;    /* position of token 0 */
    uint32_t seq_len;      /* as e8c_frame_params.seq_len */
    uint32_t rope_seq_len; /* as e8c_frame_params.rope_seq_len */
} e8c_chunk_params;

/* Bytes of a raw chunk [n_layers][2][n_kv_heads][n_tokens][head_dim] of
 * dtype for layers [layer_begin, layer_end).  Or an error. */
int64_t e8c_chunk_raw_size(const e8c_ctx *ctx, uint32_t layer_begin,
                           uint32_t layer_end, uint32_t n_tokens,
                           e8c_dtype dtype);

/* Upper bound of an encoded chunk's size for n_tokens tokens. */
int64_t e8c_chunk_max_size(const e8c_ctx *ctx, uint32_t n_tokens);

/* Encodes a raw chunk (layout above, dtype any) into dst.  Returns the
 * chunk size in bytes or an error as e8c_frame_encode. */
int64_t e8c_chunk_encode(e8c_ctx *ctx, const e8c_chunk_params *p,
                         const void *raw, e8c_dtype dtype, void *dst,
                         size_t dst_size);

typedef struct e8c_chunk_info {
    uint32_t version;
    uint8_t  fingerprint_id[E8C_ID_SIZE];
    uint32_t n_layers, n_kv_heads, head_dim, src_dtype;
    uint32_t n_tokens, first_pos, seq_len, rope_seq_len;
    uint64_t chunk_size;  /* bytes of the whole chunk */
    uint64_t payload_size;/* bytes of the layer frames */
} e8c_chunk_info;

/* Parses and validates a chunk: header, embedded fingerprint (and that its
 * id matches the header), index, every frame header and every CRC, without
 * decoding.  0 or E8C_ERR_TRUNCATED / _MAGIC / _VERSION / _CHECKSUM /
 * _CORRUPT. */
int64_t e8c_chunk_info_get(const void *chunk, size_t size,
                           e8c_chunk_info *info);

/* The fingerprint embedded in a chunk (checks the header CRC and that the
 * serialized fingerprint hashes to the stored id).  Use it to create the
 * context that decodes a chunk from its own bytes. */
int64_t e8c_chunk_fingerprint(const void *chunk, size_t size,
                              e8c_fingerprint *fp);

/* Decodes layers [layer_begin, layer_end) of a chunk into raw_dst, layout
 * [layer_end - layer_begin][2][n_kv_heads][n_tokens][head_dim] in dtype.
 * Only those layers' frames are read and checksummed (plus the chunk
 * header and index).  dp may be NULL.  0 or an error (E8C_ERR_FINGERPRINT
 * if the chunk's id is not ctx's, E8C_ERR_LAYER_RANGE, E8C_ERR_DST_SIZE,
 * the frame errors). */
int64_t e8c_chunk_decode(e8c_ctx *ctx, const void *chunk, size_t size,
                         uint32_t layer_begin, uint32_t layer_end,
                         const e8c_decode_params *dp, void *raw_dst,
                         e8c_dtype dtype, size_t dst_size);

/* ---------------------------------------- quantized layer (backend parity)
 *
 * The numeric half and the byte half of a frame, separated, so that another
 * backend (codec/cuda/) can compute the numeric half and have this library
 * write byte-identical frames (e8c_qlayer_pack), and read frames back into
 * arrays it dequantizes itself (e8c_qlayer_unpack).
 *   quantize:   tensor -> qlayer     (RoPE removal, Hadamard, scale, E8)
 *   pack:       qlayer -> frame      (layout, decorrelation, zstd, CRC)
 *   unpack:     frame  -> qlayer
 *   dequantize: qlayer -> tensor     (E8 point * scale, inverse Hadamard,
 *                                     RoPE restore, dtype conversion)
 * A qlayer's arrays are caller-owned; sizes from e8c_qlayer_sizes(). */
typedef struct e8c_qlayer {
    uint32_t kind, layer, n_tokens, first_pos, rope_seq_len;
    uint32_t method;      /* 0: whole layer raw (protected), 1: E8 */
    uint32_t n_raw_head;  /* leading tokens kept raw (sinks) */
    uint32_t n_raw_tail;  /* trailing tokens kept raw (recent window) */
    /* quantized tokens: n_q = n_tokens - n_raw_head - n_raw_tail (0 if
     * method 0), token index n_raw_head + j for j in [0, n_q) */
    uint16_t *scales;     /* [n_kv_heads][n_q] bf16 bits, >= 0 */
    int16_t  *points2;    /* [n_kv_heads][n_q][head_dim] E8 point x 2 (each
                             8-block all even or all odd, sum = 0 mod 4) */
    void     *raw;        /* [n_kv_heads][n_raw][head_dim] source-dtype bits,
                             n_raw = n_tokens if method 0, else n_raw_head +
                             n_raw_tail (head tokens first, then tail) */
} e8c_qlayer;

/* Array sizes in bytes for n_tokens (worst case over methods). */
typedef struct e8c_qlayer_sizes {
    size_t scales, points2, raw;
} e8c_qlayer_sizes;
int64_t e8c_qlayer_size(const e8c_ctx *ctx, uint32_t n_tokens,
                        e8c_qlayer_sizes *sizes);

int64_t e8c_quantize(e8c_ctx *ctx, const e8c_frame_params *p,
                     const e8c_tensor *src, e8c_qlayer *q);
int64_t e8c_qlayer_pack(e8c_ctx *ctx, const e8c_qlayer *q, void *dst,
                        size_t dst_size); /* returns frame bytes */
/* unpack: on input q->n_tokens is the capacity (tokens) the caller sized
 * q's arrays for (e8c_qlayer_size); a frame with more is refused
 * (E8C_ERR_DST_SIZE).  On output every field describes the frame. */
int64_t e8c_qlayer_unpack(e8c_ctx *ctx, const void *frame, size_t size,
                          e8c_qlayer *q);
int64_t e8c_dequantize(e8c_ctx *ctx, const e8c_qlayer *q,
                       const e8c_decode_params *dp, const e8c_tensor *dst);

/* ----------------------------------------- tables other backends reuse */

/* inv_freq[i] (fp32), i in [0, rotary_dim/2), for rope_seq_len (dynamic
 * NTK and longrope depend on it; others ignore it).  0 or an error. */
int64_t e8c_rope_inv_freq(const e8c_fingerprint *fp, uint32_t rope_seq_len,
                          float *inv_freq);
/* cos and sin tables [n_tokens][rotary_dim/2] (fp32) for positions
 * first_pos + t, exactly as FORMAT.md computes them (deterministic sincos,
 * not libm).  0 or an error. */
int64_t e8c_rope_cos_sin(const e8c_fingerprint *fp, uint32_t rope_seq_len,
                         uint32_t first_pos, uint32_t n_tokens, float *cos_t,
                         float *sin_t);
/* Hadamard sign vector for round r (0 or 1): signs[j] = +1.0f or -1.0f,
 * j in [0, head_dim). */
void e8c_hadamard_signs(uint64_t seed, uint32_t head_dim, unsigned r,
                        float *signs);

/* Library version string, e.g. "e8codec 2.0 (writes format 2; reads format 1 and 2)". */
const char *e8c_version(void);

#ifdef __cplusplus
}
#endif
#endif /* E8CODEC_H */
