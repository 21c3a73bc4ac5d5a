/* e8cu_internal.h: what the host launchers (e8cu_ctx.c, e8cu_batch.c) and the kernels
 * (e8cu_quant.cu, e8cu_dequant.cu) share: the plain parameter structs of one launch and the
 * launcher entry points. Not installed; no device code. */
#ifndef E8CU_INTERNAL_H
#define E8CU_INTERNAL_H

#include <stddef.h>
#include <stdint.h>
#include <cuda_runtime_api.h>
#include "codec/e8codec.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Items per launch: their descriptors travel as one kernel parameter (Hopper and CUDA >= 12.1
 * accept up to 32 KiB of parameters). A batch with more items takes several launches. */
#define E8CU_LAUNCH_ITEMS 192

/* Item lookup table of a launch (e8cu_launch.vbucket): entries, each the item holding the
 * first vector of a bucket of 2^vb_shift vectors. */
#define E8CU_VBUCKETS 2048

/* One frame of a launch, as the kernels see it. All offsets in bytes from the qbatch start. */
typedef struct e8cu_kitem {
    const void *src;        /* device tensor (encode: input; decode: output) */
    int64_t stride_head;    /* elements */
    int64_t stride_token;   /* elements */
    uint64_t off_scales;    /* uint16 bf16 bits [heads][n_q] */
    uint64_t off_points2;   /* int16 [heads][n_q][head_dim] */
    uint64_t off_raw;       /* source-dtype bits [heads][n_raw][head_dim] */
    uint64_t off_status;    /* int32: 0, or an E8C_ERR_* code found on the device */
    uint64_t vec_begin;     /* first flat vector index of this item in the launch */
    uint64_t raw_begin;     /* first flat raw 8-block index of this item in the launch */
    uint32_t n_q;           /* quantized tokens per head */
    uint32_t n_raw;         /* raw-kept tokens per head (head tokens first, then tail) */
    uint32_t n_raw_head;    /* leading raw tokens (their token index is 0..n_raw_head-1) */
    uint32_t n_tokens;
    uint32_t rope_row;      /* table row of token 0's position (keys) */
    uint32_t rope_row2;     /* decode, new positions: row of token 0's stored position */
    uint32_t nq_magic, nq_shift; /* launch vb_shift set: head of local vector lv < 2^31 is
                                  * umulhi(2lv, nq_magic) >> nq_shift (= lv / n_q) */
    uint16_t dtype;         /* e8c_dtype of src */
    uint8_t  kind;          /* e8c_kind */
    uint8_t  method;        /* 0: whole layer raw, 1: E8 */
} e8cu_kitem;

/* Everything one launch needs (passed by value, __grid_constant__). */
typedef struct e8cu_launch {
    unsigned char *q;            /* qbatch base (device) */
    const float *signs;          /* [2][head_dim] Hadamard signs, rounds 0 and 1 */
    const float *rope_cos;       /* [rows][rotary_dim/2] for the tokens' positions, or NULL */
    const float *rope_sin;
    const float *rope_cos2;      /* decode of raw keys at new positions: tables at the stored */
    const float *rope_sin2;      /* positions (rope_row2), NULL otherwise */
    float k_step, v_step;        /* lattice steps (FORMAT §4) */
    float inv_n;                 /* pow2: 1/head_dim (exact); gain_n: pow2, the gain of one BH */
    float gain_n;                /* block of the whole vector (bh_gain[log2 R]); else 0 */
    uint32_t head_dim;           /* n */
    uint32_t n_kv_heads;         /* H */
    uint32_t R;                  /* n / 8 */
    uint32_t pow2;               /* n is a power of two: one Hadamard round */
    uint32_t rotary_dim, rope_layout;
    uint32_t rope_on;            /* keys carry RoPE (type != NONE) */
    uint32_t out_dtype;          /* dequantize: dtype of every item's output tensor */
    uint32_t src_dtype;          /* the fingerprint's source dtype (raw-kept tokens) */
    uint32_t n_items;
    uint64_t n_vec;              /* quantized vectors in the launch */
    uint64_t n_raw_blocks;       /* raw-kept 8-blocks in the launch */
    uint32_t vec_per_item;       /* every item has this many vectors and n_vec < 2^32, else 0 */
    uint32_t raw_per_item;       /* the same for raw 8-blocks */
    /* vec_per_item != 0 and n_vec < 2^31: item = umulhi(2v, vec_magic) >> vec_shift (=
     * v / vec_per_item), and the same for head = lv / n_q with n_q = vec_per_item / H
     * (Granlund & Montgomery; e8cu_fastq.cuh). vec_magic == 0: not set, divide. */
    uint32_t vec_magic, vec_shift, nq_uni, nq_magic, nq_shift;
    uint32_t all16;              /* 1: every item's src dtype is fp16, 2: every one bf16, else 0 */
    /* n_vec < 2^31 and vec_per_item == 0: vbucket[v >> vb_shift] is the item holding vector
     * (v >> vb_shift) << vb_shift; vector v's item is that one or a later one (walk forward
     * while v >= the next item's vec_begin). vb_shift = 0xff: no table (binary search). */
    uint32_t vb_shift;
    /* host: 1 when the stream's previous operation is this call's previous quantize launch
     * (e8cu_launch_quantize may then overlap it, programmatic dependent launch) */
    uint32_t pdl;
    uint8_t  vbucket[E8CU_VBUCKETS];
    uint8_t  sgn_bits[2][E8C_MAX_HEAD_DIM / 8]; /* Hadamard signs of rounds 0, 1 per 8-block:
                                                   bit i set = element 8b+i multiplied by -1 */
    uint8_t  bh_log2[E8C_MAX_HEAD_DIM / 8]; /* per 8-block: log2(8-blocks of its BH block) */
    float    bh_gain[8];         /* gain of a BH block of 8·2^k elements: fp32(1/sqrt(m)) */
    e8cu_kitem items[E8CU_LAUNCH_ITEMS];
} e8cu_launch;

/* Kernel launchers (e8cu_quant.cu, e8cu_dequant.cu). Return a cudaError_t. */
int e8cu_launch_quantize(const e8cu_launch *L, cudaStream_t stream);
int e8cu_launch_dequantize(const e8cu_launch *L, cudaStream_t stream);

#ifdef __cplusplus
}
#endif
#endif
