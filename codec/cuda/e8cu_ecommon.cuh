/* e8cu_ecommon.cuh: device helpers of the entropy kernels (encode e8cu_enc.cu, decode
 * e8cu_dec.cu): FORMAT.md §5.2 integers, zigzag, LEB128 sizes, block-wide scans. Integer work
 * only: every result is exact, whatever the thread order. */
#ifndef E8CU_ECOMMON_CUH
#define E8CU_ECOMMON_CUH

#include <stdint.h>
#include "codec/cuda/e8cu_entropy.h"

#define E8CU_ET 256 /* threads of the per-frame and per-head kernels */
#define E8CU_A16(x) (((x) + 15ull) & ~15ull)

__device__ __forceinline__ uint32_t e8cu_zz(int32_t v) { return ((uint32_t)v << 1) ^ (uint32_t)(v >> 31); }

__device__ __forceinline__ uint32_t e8cu_leb_len(uint32_t v)
{
    return 1u + (v >= (1u << 7)) + (v >= (1u << 14)) + (v >= (1u << 21)) + (v >= (1u << 28));
}

/* Bytes a symbol adds to the escape stream: 0 below 255, else LEB128 of z - 255. */
__device__ __forceinline__ uint32_t e8cu_esc_len(uint32_t z) { return z < 255u ? 0u : e8cu_leb_len(z - 255u); }

__device__ __forceinline__ uint32_t e8cu_leb_put(unsigned char *p, uint32_t v)
{
    uint32_t k = 0;
    while (v >= 0x80u) { p[k++] = (unsigned char)(v | 0x80u); v >>= 7; }
    p[k++] = (unsigned char)v;
    return k;
}

/* Stored integers S of one 8-block from its points x 2 (FORMAT §5.2): c = P0 & 1,
 * S_i = (P_i - c)/2 for i < 7, S_7 = floor((P_7 - c)/2 / 2). P_i - c is even: shifts are exact. */
__device__ __forceinline__ void e8cu_S8(uint4 w, int32_t S[8])
{
    int32_t p[8] = {(int16_t)(w.x & 0xffffu), (int16_t)(w.x >> 16), (int16_t)(w.y & 0xffffu), (int16_t)(w.y >> 16),
                    (int16_t)(w.z & 0xffffu), (int16_t)(w.z >> 16), (int16_t)(w.w & 0xffffu), (int16_t)(w.w >> 16)};
    int32_t c = p[0] & 1;
#pragma unroll
    for (int i = 0; i < 7; i++) S[i] = (p[i] - c) >> 1;
    S[7] = (p[7] - c) >> 2;
}

/* S of element j of token t (one head's points2 [Q][n]). */
__device__ __forceinline__ int32_t e8cu_S_at(const int16_t *p2, uint32_t t, uint32_t n, uint32_t j)
{
    const int16_t *row = p2 + (size_t)t * n;
    int32_t c = row[j & ~7u] & 1, d = (int32_t)row[j] - c;
    return (j & 7u) == 7u ? (d >> 2) : (d >> 1);
}

/* Decorrelated values R of 8-block b of token t (FORMAT §5.2 modes 1-3; Ms = the means). */
__device__ __forceinline__ void e8cu_R8(const int16_t *p2, uint32_t n, uint32_t t, uint32_t b, uint32_t mode,
                                        const int32_t *Ms, int32_t R[8])
{
    e8cu_S8(*(const uint4 *)(p2 + (size_t)t * n + 8 * b), R);
    if (mode == 2 && t > 0) {
        int32_t P[8];
        e8cu_S8(*(const uint4 *)(p2 + (size_t)(t - 1) * n + 8 * b), P);
#pragma unroll
        for (int i = 0; i < 8; i++) R[i] -= P[i];
    } else if (mode == 3) {
#pragma unroll
        for (int i = 0; i < 8; i++) R[i] -= Ms[8 * b + i];
    }
}

__device__ __forceinline__ unsigned long long e8cu_warp_sum64(unsigned long long v)
{
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

/* Exclusive prefix sum over the E8CU_ET threads of a block (every thread calls it); *total gets
 * the sum. sm: E8CU_ET/32 + 1 words of shared memory. */
__device__ __forceinline__ unsigned long long e8cu_block_scan(unsigned long long v, unsigned long long *sm,
                                                             unsigned long long *total)
{
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    unsigned long long x = v;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        unsigned long long y = __shfl_up_sync(0xffffffffu, x, o);
        if (lane >= o) x += y;
    }
    __syncthreads();
    if (lane == 31) sm[w] = x;
    __syncthreads();
    if (w == 0) {
        unsigned long long s = lane < E8CU_ET / 32 ? sm[lane] : 0, t = s;
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
            unsigned long long y = __shfl_up_sync(0xffffffffu, t, o);
            if (lane >= o) t += y;
        }
        if (lane < E8CU_ET / 32) sm[lane] = t - s;
        if (lane == E8CU_ET / 32 - 1) sm[E8CU_ET / 32] = t;
    }
    __syncthreads();
    unsigned long long r = sm[w] + x - v;
    *total = sm[E8CU_ET / 32];
    __syncthreads();
    return r;
}

/* Sum over the block (every thread calls it). */
__device__ __forceinline__ unsigned long long e8cu_block_sum(unsigned long long v, unsigned long long *sm)
{
    unsigned long long t;
    e8cu_block_scan(v, sm, &t);
    return t;
}

/* The q-th stream of the rANS kernels' job order: 3, 4, 2, 0, 1 (longest first). */
__device__ __forceinline__ uint32_t e8cu_stream_order(uint64_t q) { return (0x10243u >> (4 * q)) & 15u; }

/* Byte copy by all threads of a block. */
__device__ __forceinline__ void e8cu_block_copy(unsigned char *dst, const unsigned char *src, uint64_t len)
{
    for (uint64_t i = threadIdx.x; i < len; i += blockDim.x) dst[i] = src[i];
}

#endif
