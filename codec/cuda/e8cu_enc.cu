/* e8cu_enc.cu: the entropy stage of encoding on the GPU (FORMAT.md §5.2-5.3 v2, coding 3):
 * the kernels listed in e8cu_entropy.h, producing the frames' stream bytes exactly as the CPU
 * packer (codec/e8c_pack.c) writes them. */
#include "codec/cuda/e8cu_ecommon.cuh"

#define E8CU_RW 4 /* warps per block of the rANS kernel */

/* ------------------------------------------------------------ streams 0-2 (block per frame) */

__global__ void __launch_bounds__(E8CU_ET) e8cu_scos_kernel(const __grid_constant__ e8cu_elaunch L)
{
    __shared__ uint32_t hs[3][256];
    for (uint32_t fi = blockIdx.x; fi < L.n_frames; fi += gridDim.x) {
        const e8cu_eframe &f = L.fr[fi];
        if (f.method == 0 || f.n_q == 0) continue;
        for (int k = threadIdx.x; k < 3 * 256; k += E8CU_ET) hs[k / 256][k % 256] = 0;
        __syncthreads();
        const uint64_t nv = (uint64_t)L.H * f.n_q, nb = nv * L.n / 8, ncb = (nb + 7) / 8;
        const uint16_t *sc = (const uint16_t *)(L.q + f.off_scales);
        unsigned char *s0 = L.ws + f.ws[0], *s1 = L.ws + f.ws[1], *s2 = L.ws + f.ws[2];
        for (uint64_t v = threadIdx.x; v < nv; v += E8CU_ET) {
            uint32_t s = sc[v];
            s0[v] = (unsigned char)(s >> 8);
            s1[v] = (unsigned char)s;
            atomicAdd(&hs[0][s >> 8], 1u);
            atomicAdd(&hs[1][s & 255u], 1u);
        }
        const int16_t *p2 = (const int16_t *)(L.q + f.off_points2);
        for (uint64_t k = threadIdx.x; k < ncb; k += E8CU_ET) {
            uint32_t byte = 0;
#pragma unroll
            for (int i = 0; i < 8; i++) {
                uint64_t b = 8 * k + i;
                if (b < nb) byte |= (uint32_t)(p2[8 * b] & 1) << i;
            }
            s2[k] = (unsigned char)byte;
            atomicAdd(&hs[2][byte], 1u);
        }
        __syncthreads();
        uint32_t *gh = L.hist + (size_t)fi * 5 * 256;
        for (int k = threadIdx.x; k < 3 * 256; k += E8CU_ET) gh[k] = hs[k / 256][k % 256];
        __syncthreads();
    }
}

/* ------------------------------------------------------------ heads: modes, streams 3-4 */

/* Histogram of small symbols in registers: byte counters of symbols 0-7 (lo) and 8-15 (hi);
 * larger ones go straight to shared memory. Flushed (warp sums, one atomic per bin and warp)
 * before a counter can pass 255. */
__device__ __forceinline__ void e8cu_hcount(uint32_t z, unsigned long long &lo, unsigned long long &hi, uint32_t *h)
{
    if (z < 8u) lo += 1ull << (8 * z);
    else if (z < 16u) hi += 1ull << (8 * (z - 8));
    else atomicAdd(&h[z < 255u ? z : 255u], 1u);
}

__device__ __forceinline__ void e8cu_hflush(unsigned long long &lo, unsigned long long &hi, uint32_t *h)
{
#pragma unroll
    for (int k = 0; k < 16; k++) {
        uint32_t v = (uint32_t)(((k < 8 ? lo : hi) >> (8 * (k & 7))) & 255u);
        v = __reduce_add_sync(0xffffffffu, v);
        if ((threadIdx.x & 31) == 0 && v) atomicAdd(&h[k], v);
    }
    lo = hi = 0;
}

/* One block per KV head. Thread (g, b): 8-block column b (16-byte loads of 8 points), rows of
 * group g: [Q·g/G, Q·(g+1)/G) in the statistics passes, row t0 + g of each tile when emitting. */
__global__ void __launch_bounds__(E8CU_ET) e8cu_heads_kernel(const __grid_constant__ e8cu_elaunch L)
{
    __shared__ int32_t colsum[512];
    __shared__ int32_t Ms[512];
    __shared__ uint32_t h3[256], h4[256];
    __shared__ unsigned long long red[E8CU_ET / 32 + 1];
    __shared__ uint32_t mode_s;
    const uint32_t n = L.n, tid = threadIdx.x, R8 = n / 8;
    const uint32_t G = E8CU_ET / R8, g = tid / R8, cb = tid % R8, on_col = tid < G * R8;
    for (uint32_t hi = blockIdx.x; hi < L.n_heads; hi += gridDim.x) {
        e8cu_ehead &hd = L.hd[hi];
        const e8cu_eframe &f = L.fr[hd.frame];
        const uint32_t Q = f.n_q;
        const int16_t *p2 = (const int16_t *)(L.q + f.off_points2) + (size_t)hd.h * Q * n;
        for (uint32_t j = tid; j < n; j += E8CU_ET) colsum[j] = 0;
        for (uint32_t k = tid; k < 256; k += E8CU_ET) { h3[k] = 0; h4[k] = 0; }
        __syncthreads();
        /* pass 1: column sums (|sum| <= 2^30), costs of modes 1 and 2, their escape bytes */
        unsigned long long c1 = 0, c2 = 0, c3 = 0;
        uint32_t e31 = 0, e41 = 0, e32 = 0, e42 = 0, e33 = 0, e43 = 0;
        const uint32_t r0 = (uint32_t)((uint64_t)Q * g / G), r1 = (uint32_t)((uint64_t)Q * (g + 1) / G);
        if (on_col) {
            int32_t cs[8] = {0, 0, 0, 0, 0, 0, 0, 0}, P[8];
            if (r0 > 0) e8cu_S8(*(const uint4 *)(p2 + (size_t)(r0 - 1) * n + 8 * cb), P);
            for (uint32_t t = r0; t < r1; t++) {
                int32_t S[8];
                e8cu_S8(*(const uint4 *)(p2 + (size_t)t * n + 8 * cb), S);
                uint32_t a1 = 0, a2 = 0;
#pragma unroll
                for (int i = 0; i < 8; i++) {
                    cs[i] += S[i];
                    uint32_t z1 = e8cu_zz(S[i]), z2 = e8cu_zz(t ? S[i] - P[i] : S[i]);
                    a1 += z1;
                    a2 += z2;
                    if (i < 7) { e31 += e8cu_esc_len(z1); e32 += e8cu_esc_len(z2); }
                    else { e41 += e8cu_esc_len(z1); e42 += e8cu_esc_len(z2); }
                    P[i] = S[i];
                }
                c1 += a1;
                c2 += a2;
            }
#pragma unroll
            for (int i = 0; i < 8; i++) atomicAdd(&colsum[8 * cb + i], cs[i]);
        }
        __syncthreads();
        for (uint32_t j = tid; j < n; j += E8CU_ET) {
            long long num = (long long)colsum[j] + Q / 2;
            Ms[j] = (int32_t)(num >= 0 ? num / Q : -((-num + Q - 1) / Q));
        }
        __syncthreads();
        /* pass 2: cost of mode 3 and its escape bytes */
        if (on_col) {
            int32_t M8[8];
#pragma unroll
            for (int i = 0; i < 8; i++) M8[i] = Ms[8 * cb + i];
            for (uint32_t t = r0; t < r1; t++) {
                int32_t S[8];
                e8cu_S8(*(const uint4 *)(p2 + (size_t)t * n + 8 * cb), S);
                uint32_t a3 = 0;
#pragma unroll
                for (int i = 0; i < 8; i++) {
                    uint32_t z = e8cu_zz(S[i] - M8[i]);
                    a3 += z;
                    if (i < 7) e33 += e8cu_esc_len(z); else e43 += e8cu_esc_len(z);
                }
                c3 += a3;
            }
        }
        unsigned long long cost[4];
        cost[1] = e8cu_block_sum(c1, red);
        cost[2] = e8cu_block_sum(c2, red);
        cost[3] = e8cu_block_sum(c3, red);
        unsigned long long E1 = e8cu_block_sum(((unsigned long long)e41 << 32) | e31, red);
        unsigned long long E2 = e8cu_block_sum(((unsigned long long)e42 << 32) | e32, red);
        unsigned long long E3 = e8cu_block_sum(((unsigned long long)e43 << 32) | e33, red);
        if (tid == 0) {
            uint32_t mode = L.decor;
            if (mode == 0) {
                mode = 1;
                for (uint32_t k = 2; k <= 3; k++) if (cost[k] < cost[mode]) mode = k;
            }
            unsigned long long E = mode == 1 ? E1 : mode == 2 ? E2 : E3;
            uint32_t ml = 1;
            if (mode == 3)
                for (uint32_t j = 0; j < n; j++) ml += e8cu_leb_len(e8cu_zz(Ms[j]));
            hd.mode = mode;
            hd.esc3 = (uint32_t)E;
            hd.esc4 = (uint32_t)(E >> 32);
            hd.mlen = ml;
            mode_s = mode;
        }
        for (uint32_t j = tid; j < n; j += E8CU_ET) L.M[(size_t)hi * n + j] = Ms[j];
        __syncthreads();
        /* pass 3: symbols of streams 3 and 4, in stream order (tiles of G rows) */
        const uint32_t mode = mode_s;
        unsigned char *cst = L.ws + f.ws[3] + (size_t)hd.h * Q * R8 * 7;
        unsigned char *hst = L.ws + f.ws[4] + (size_t)hd.h * Q * R8;
        unsigned long long l3 = 0, u3 = 0, l4 = 0, u4 = 0;
        uint32_t tile = 0;
        for (uint32_t t0 = 0; t0 < Q; t0 += G, tile++) {
            const uint32_t t = t0 + g;
            if (on_col && t < Q) {
                int32_t R[8];
                e8cu_R8(p2, n, t, cb, mode, Ms, R);
                unsigned char *o = cst + ((size_t)t * R8 + cb) * 7;
#pragma unroll
                for (int i = 0; i < 7; i++) {
                    uint32_t z = e8cu_zz(R[i]);
                    o[i] = (unsigned char)(z < 255u ? z : 255u);
                    e8cu_hcount(z, l3, u3, h3);
                }
                uint32_t z = e8cu_zz(R[7]);
                hst[(size_t)t * R8 + cb] = (unsigned char)(z < 255u ? z : 255u);
                e8cu_hcount(z, l4, u4, h4);
            }
            if ((tile & 31u) == 31u) { e8cu_hflush(l3, u3, h3); e8cu_hflush(l4, u4, h4); }
        }
        e8cu_hflush(l3, u3, h3);
        e8cu_hflush(l4, u4, h4);
        __syncthreads();
        uint32_t *gh = L.hist + (size_t)hd.frame * 5 * 256;
        for (uint32_t k = tid; k < 256; k += E8CU_ET) {
            if (h3[k]) atomicAdd(&gh[3 * 256 + k], h3[k]);
            if (h4[k]) atomicAdd(&gh[4 * 256 + k], h4[k]);
        }
        __syncthreads();
    }
}

/* ------------------------------------------------------------ rans32 (warp per stream) */

/* FORMAT §5.3 frequencies from counts, on one warp: lane l owns symbols 8l..8l+7. */
__device__ __forceinline__ void e8cu_normalize(uint32_t fr[8], const uint32_t cnt[8], uint32_t N, int lane)
{
    uint32_t sum = 0;
#pragma unroll
    for (int k = 0; k < 8; k++) {
        uint64_t v = ((uint64_t)cnt[k] * 4096u + N / 2) / N;
        fr[k] = cnt[k] ? (v ? (uint32_t)v : 1u) : 0u;
        sum += fr[k];
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
    while (sum != 4096u) {
        /* the first symbol with the largest f: key = f << 8 | (255 - symbol), the max wins */
        uint32_t key = 0;
#pragma unroll
        for (int k = 0; k < 8; k++) {
            uint32_t kk = (fr[k] << 8) | (uint32_t)(255 - (8 * lane + k));
            key = kk > key ? kk : key;
        }
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            uint32_t y = __shfl_xor_sync(0xffffffffu, key, o);
            key = y > key ? y : key;
        }
        uint32_t fmax = key >> 8, sym = 255u - (key & 255u), delta;
        int add;
        if (sum > 4096u) {
            uint32_t d = sum - 4096u, room = fmax - 1u;
            delta = d < room ? d : room;
            if (delta == 0) delta = 1;
            add = 0;
            sum -= delta;
        } else {
            delta = 4096u - sum;
            add = 1;
            sum = 4096u;
        }
        if ((int)(sym >> 3) == lane) {
#pragma unroll
            for (int k = 0; k < 8; k++)
                if ((uint32_t)k == (sym & 7u)) fr[k] = add ? fr[k] + delta : fr[k] - delta;
        }
    }
}

__device__ __forceinline__ uint32_t e8cu_warp_excl(uint32_t v, int lane, uint32_t *total)
{
    uint32_t x = v;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        uint32_t y = __shfl_up_sync(0xffffffffu, x, o);
        if (lane >= o) x += y;
    }
    *total = __shfl_sync(0xffffffffu, x, 31);
    return x - v;
}

__global__ void __launch_bounds__(32 * E8CU_RW) e8cu_rans_kernel(const __grid_constant__ e8cu_elaunch L)
{
    __shared__ uint32_t tab[E8CU_RW][256];
    __shared__ unsigned long long rcp[E8CU_RW][256]; /* ceil(2^44 / f): x / f = x * rcp >> 44 */
    __shared__ __align__(16) unsigned char buf[E8CU_RW][1024];
    const int w = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const unsigned lt = (1u << lane) - 1u;
    const uint64_t njobs = (uint64_t)L.n_frames * 5;
    for (uint64_t job = (uint64_t)blockIdx.x * E8CU_RW + w; job < njobs; job += (uint64_t)gridDim.x * E8CU_RW) {
        /* longest streams first (coords, halves, cosets, scales): they start in the first wave */
        const uint32_t s = e8cu_stream_order(job / L.n_frames), fi = (uint32_t)(job % L.n_frames);
        e8cu_eframe &f = L.fr[fi];
        const uint32_t N = f.raw_len[s];
        if (f.method == 0) continue;
        if (N == 0) {
            if (lane == 0) { f.coding[s] = E8CU_CODING_STORED; f.stored_len[s] = 0; }
            continue;
        }
        const uint32_t *hist = L.hist + ((size_t)fi * 5 + s) * 256;
        uint32_t cnt[8], fr[8];
#pragma unroll
        for (int k = 0; k < 8; k++) cnt[k] = hist[8 * lane + k];
        e8cu_normalize(fr, cnt, N, lane);
        /* starts, table bytes */
        uint32_t loc = 0, nz = 0, tb = 0;
#pragma unroll
        for (int k = 0; k < 8; k++) {
            loc += fr[k];
            nz += fr[k] != 0;
            tb += fr[k] ? (fr[k] >= 128u ? 3u : 2u) : 0u;
        }
        uint32_t tot, nsym, tbl;
        uint32_t st = e8cu_warp_excl(loc, lane, &tot);
        uint32_t toff = e8cu_warp_excl(tb, lane, &tbl);
        e8cu_warp_excl(nz, lane, &nsym);
        const uint32_t K = N >= 65536u ? 32u : N >= 8192u ? 8u : 1u;
        const uint32_t hsz = 3u + tbl + 4u * K;
        unsigned char *slot = L.cw + f.cs[s];
        uint16_t *wend = (uint16_t *)(slot + E8CU_A16(N));
        const unsigned char *sym = L.ws + f.ws[s];
#pragma unroll
        for (int k = 0; k < 8; k++) {
            tab[w][8 * lane + k] = (st << 13) | fr[k];
            rcp[w][8 * lane + k] = fr[k] ? ((1ull << 44) + fr[k] - 1) / fr[k] : 0;
            st += fr[k];
        }
        __syncwarp();
        bool ok = hsz < N;
        uint32_t x = 1u << 16, wpos = 0;
        const uint32_t nchunks = (N + 1023u) / 1024u;
        const uint64_t lim = E8CU_A16(N);
        uint4 nx[2];
        /* chunks of 1024 symbols (= 1024/K rounds) from the last: loads of the next chunk are
         * in flight while this one is encoded */
        uint32_t ch = nchunks - 1;
#pragma unroll
        for (int q = 0; q < 2; q++) {
            uint64_t o = (uint64_t)ch * 1024 + 512 * q + 16 * lane;
            nx[q] = o < lim ? *(const uint4 *)(sym + o) : make_uint4(0, 0, 0, 0);
        }
        for (;;) {
            __syncwarp();
#pragma unroll
            for (int q = 0; q < 2; q++) *(uint4 *)(&buf[w][512 * q + 16 * lane]) = nx[q];
            __syncwarp();
            if (!ok) break;
            if (ch > 0) {
#pragma unroll
                for (int q = 0; q < 2; q++) {
                    uint64_t o = (uint64_t)(ch - 1) * 1024 + 512 * q + 16 * lane;
                    nx[q] = *(const uint4 *)(sym + o);
                }
            }
            const uint32_t rlo = ch * 1024u / K, rhi = min((ch + 1) * 1024u, N + K - 1) / K;
            for (uint32_t r = rhi; r-- > rlo;) {
                const uint32_t i = r * K + lane;
                const bool act = (uint32_t)lane < K && i < N;
                const uint32_t sy = act ? buf[w][i - ch * 1024u] : 0u;
                const uint32_t e = act ? tab[w][sy] : 0u;
                const uint32_t fs = e & 0x1fffu, ss = e >> 13;
                const bool emit = act && (uint64_t)x >= ((uint64_t)fs << 20);
                const unsigned mask = __ballot_sync(0xffffffffu, emit);
                const uint32_t cw = __popc(mask);
                if (hsz + 2u * (wpos + cw) >= N) { ok = false; break; }
                if (emit) {
                    wend[-(int64_t)(wpos + cw) + __popc(mask & lt)] = (uint16_t)(x & 0xffffu);
                    x >>= 16;
                }
                wpos += cw;
                /* x < f * 2^20 here, so the reciprocal gives x / f exactly (see e8c_rans32.c) */
                if (act) x += ss + (uint32_t)(((unsigned long long)x * rcp[w][sy]) >> 44) * (4096u - fs);
            }
            if (!ok || ch == 0) break;
            ch--;
        }
        if (ok) {
            if (lane == 0) {
                slot[0] = (unsigned char)K;
                slot[1] = (unsigned char)nsym;
                slot[2] = (unsigned char)(nsym >> 8);
            }
            unsigned char *tp = slot + 3 + toff;
#pragma unroll
            for (int k = 0; k < 8; k++)
                if (fr[k]) {
                    *tp++ = (unsigned char)(8 * lane + k);
                    tp += e8cu_leb_put(tp, fr[k]);
                }
            if ((uint32_t)lane < K) {
                unsigned char *xp = slot + 3 + tbl + 4 * lane;
                xp[0] = (unsigned char)x; xp[1] = (unsigned char)(x >> 8);
                xp[2] = (unsigned char)(x >> 16); xp[3] = (unsigned char)(x >> 24);
            }
            if (lane == 0) {
                f.coding[s] = E8CU_CODING_RANS32;
                f.stored_len[s] = hsz + 2 * wpos;
                f.hsz[s] = hsz;
                f.nwords[s] = wpos;
            }
        } else if (lane == 0) {
            f.coding[s] = E8CU_CODING_STORED;
            f.stored_len[s] = N;
        }
    }
}

/* ------------------------------------------------------------ sizes and offsets (one block) */

__device__ __forceinline__ uint64_t e8cu_frame_sizes(const e8cu_elaunch &L, e8cu_eframe &f)
{
    if (f.method == 0) {
        f.coding[0] = E8CU_CODING_STORED;
        f.stored_len[0] = f.raw_len[0];
        f.frame_size = E8CU_HDR_RAW + f.raw_len[0];
        return f.frame_size;
    }
    uint32_t esc = 0, ml = 0;
    if (f.n_q == 0) ml = L.H;
    else
        for (uint32_t h = 0; h < L.H; h++) {
            const e8cu_ehead &hd = L.hd[f.head0 + h];
            esc += hd.esc3 + hd.esc4;
            ml += hd.mlen;
        }
    f.raw_len[5] = esc;
    f.raw_len[6] = ml;
    uint64_t sz = E8CU_HDR_E8;
    for (int s = 0; s < E8CU_NS; s++) {
        if (s >= 5) { f.coding[s] = E8CU_CODING_STORED; f.stored_len[s] = f.raw_len[s]; }
        sz += f.stored_len[s];
    }
    f.frame_size = (uint32_t)sz;
    return sz;
}

__global__ void __launch_bounds__(E8CU_ET) e8cu_scan_kernel(const __grid_constant__ e8cu_elaunch L)
{
    __shared__ unsigned long long sm[E8CU_ET / 32 + 1];
    const uint32_t per = (L.n_frames + E8CU_ET - 1) / E8CU_ET;
    const uint32_t a = threadIdx.x * per, b = min(a + per, L.n_frames);
    unsigned long long mine = 0, total;
    for (uint32_t i = a; i < b; i++) mine += e8cu_frame_sizes(L, L.fr[i]);
    unsigned long long off = e8cu_block_scan(mine, sm, &total);
    for (uint32_t i = a; i < b; i++) {
        L.fr[i].frame_off = off;
        off += L.fr[i].frame_size;
    }
    if (threadIdx.x == 0) *L.total = total;
}

/* ------------------------------------------------------------ placing (block per frame) */

__global__ void __launch_bounds__(E8CU_ET) e8cu_place_kernel(const __grid_constant__ e8cu_elaunch L)
{
    for (uint32_t fi = blockIdx.x; fi < L.n_frames; fi += gridDim.x) {
        const e8cu_eframe &f = L.fr[fi];
        if (f.frame_off + f.frame_size > L.out_cap) continue;
        unsigned char *base = L.out + f.frame_off;
        if (f.method == 0) {
            e8cu_block_copy(base + E8CU_HDR_RAW, L.q + f.off_raw, f.raw_len[0]);
            continue;
        }
        uint64_t o = E8CU_HDR_E8;
        for (int s = 0; s < 5; s++) {
            if (f.coding[s] == E8CU_CODING_RANS32) {
                const unsigned char *slot = L.cw + f.cs[s];
                e8cu_block_copy(base + o, slot, f.hsz[s]);
                e8cu_block_copy(base + o + f.hsz[s], slot + E8CU_A16(f.raw_len[s]) - 2ull * f.nwords[s],
                                2ull * f.nwords[s]);
            } else {
                e8cu_block_copy(base + o, L.ws + f.ws[s], f.raw_len[s]);
            }
            o += f.stored_len[s];
        }
        o += f.stored_len[5];
        if (threadIdx.x == 0) {
            unsigned char *m = base + o;
            if (f.n_q == 0)
                for (uint32_t h = 0; h < L.H; h++) *m++ = 1;
            else
                for (uint32_t h = 0; h < L.H; h++) {
                    const e8cu_ehead &hd = L.hd[f.head0 + h];
                    *m++ = (unsigned char)hd.mode;
                    if (hd.mode == 3) {
                        const int32_t *M = L.M + (size_t)(f.head0 + h) * L.n;
                        for (uint32_t j = 0; j < L.n; j++) m += e8cu_leb_put(m, e8cu_zz(M[j]));
                    }
                }
        }
        o += f.stored_len[6];
        e8cu_block_copy(base + o, L.q + f.off_raw, f.raw_len[7]);
    }
}

/* Stream 5: each head's escapes at their place (heads without escapes return at once). */
__global__ void __launch_bounds__(E8CU_ET) e8cu_escape_kernel(const __grid_constant__ e8cu_elaunch L)
{
    __shared__ int32_t Ms[512];
    __shared__ unsigned long long sm[E8CU_ET / 32 + 1];
    const uint32_t n = L.n, tid = threadIdx.x, R8 = n / 8, TR = E8CU_ET / R8, used = TR * R8;
    for (uint32_t hi = blockIdx.x; hi < L.n_heads; hi += gridDim.x) {
        const e8cu_ehead &hd = L.hd[hi];
        if (hd.esc3 + hd.esc4 == 0) continue;
        const e8cu_eframe &f = L.fr[hd.frame];
        if (f.frame_off + f.frame_size > L.out_cap) continue;
        uint64_t b3 = 0, b4 = 0;
        for (uint32_t h = 0; h < L.H; h++) {
            const e8cu_ehead &o = L.hd[f.head0 + h];
            if (h < hd.h) { b3 += o.esc3; b4 += o.esc4; }
            b4 += o.esc3;
        }
        uint64_t o5 = f.frame_off + E8CU_HDR_E8;
        for (int s = 0; s < 5; s++) o5 += f.stored_len[s];
        unsigned char *e3 = L.out + o5 + b3, *e4 = L.out + o5 + b4;
        for (uint32_t j = tid; j < n; j += E8CU_ET) Ms[j] = L.M[(size_t)hi * n + j];
        __syncthreads();
        const uint32_t Q = f.n_q;
        const int16_t *p2 = (const int16_t *)(L.q + f.off_points2) + (size_t)hd.h * Q * n;
        for (uint32_t t0 = 0; t0 < Q; t0 += TR) {
            uint32_t t = t0 + tid / R8, b = tid % R8;
            int32_t R[8];
            uint32_t l3 = 0, l4 = 0;
            const bool on = tid < used && t < Q;
            if (on) {
                e8cu_R8(p2, n, t, b, hd.mode, Ms, R);
#pragma unroll
                for (int i = 0; i < 7; i++) l3 += e8cu_esc_len(e8cu_zz(R[i]));
                l4 = e8cu_esc_len(e8cu_zz(R[7]));
            }
            unsigned long long tot;
            unsigned long long ex = e8cu_block_scan(((unsigned long long)l4 << 32) | l3, sm, &tot);
            if (on && (l3 | l4)) {
                unsigned char *p = e3 + (uint32_t)ex;
#pragma unroll
                for (int i = 0; i < 7; i++) {
                    uint32_t z = e8cu_zz(R[i]);
                    if (z >= 255u) p += e8cu_leb_put(p, z - 255u);
                }
                uint32_t z = e8cu_zz(R[7]);
                if (z >= 255u) e8cu_leb_put(e4 + (ex >> 32), z - 255u);
            }
            e3 += (uint32_t)tot;
            e4 += tot >> 32;
        }
        __syncthreads();
    }
}

static unsigned e8cu_grid(uint64_t need, unsigned cap) { return (unsigned)(need < cap ? (need ? need : 1) : cap); }

extern "C" int e8cu_launch_entropy_place(const e8cu_elaunch *L, cudaStream_t stream)
{
    e8cu_place_kernel<<<e8cu_grid(L->n_frames, 65535), E8CU_ET, 0, stream>>>(*L);
    cudaError_t e = cudaGetLastError();
    e8cu_prof("enc place", stream);
    if (e == cudaSuccess && L->n_heads) {
        e8cu_escape_kernel<<<e8cu_grid(L->n_heads, 65535), E8CU_ET, 0, stream>>>(*L);
        e = cudaGetLastError();
        e8cu_prof("enc escapes", stream);
    }
    return (int)e;
}

extern "C" int e8cu_launch_entropy_encode(const e8cu_elaunch *L, cudaStream_t stream)
{
    if (L->n_frames == 0) return 0;
    e8cu_prof(NULL, stream);
    e8cu_scos_kernel<<<e8cu_grid(L->n_frames, 65535), E8CU_ET, 0, stream>>>(*L);
    cudaError_t e = cudaGetLastError();
    e8cu_prof("enc scales/cosets", stream);
    if (e == cudaSuccess && L->n_heads) {
        e8cu_heads_kernel<<<e8cu_grid(L->n_heads, 65535), E8CU_ET, 0, stream>>>(*L);
        e = cudaGetLastError();
        e8cu_prof("enc heads", stream);
    }
    if (e == cudaSuccess) {
        e8cu_rans_kernel<<<e8cu_grid(((uint64_t)L->n_frames * 5 + E8CU_RW - 1) / E8CU_RW, 65535), 32 * E8CU_RW, 0,
                           stream>>>(*L);
        e = cudaGetLastError();
        e8cu_prof("enc rans32", stream);
    }
    if (e == cudaSuccess) {
        e8cu_scan_kernel<<<1, E8CU_ET, 0, stream>>>(*L);
        e = cudaGetLastError();
        e8cu_prof("enc scan", stream);
    }
    if (e == cudaSuccess) e = (cudaError_t)e8cu_launch_entropy_place(L, stream);
    return (int)e;
}
