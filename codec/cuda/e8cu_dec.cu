/* e8cu_dec.cu: the entropy stage of decoding on the GPU (FORMAT.md §5.2-5.3 v2): coding 3
 * decoded one warp per stream, then the layout undone into the qbatch (points x 2, scales, raw
 * tokens) for the dequantize kernels. Every check of the CPU decoder (codec/e8c_pack.c
 * e8c_unpack) is made; a frame failing one gets a nonzero status (the host reports
 * E8C_ERR_CORRUPT, as the CPU does). See e8cu_entropy.h for the kernel list. */
#include "codec/cuda/e8cu_ecommon.cuh"

#define E8CU_DW 4 /* warps per block of the rANS decoder */

__device__ __forceinline__ void e8cu_bad(e8cu_dframe &f, int why) { atomicCAS(&f.status, 0, why); }

/* ------------------------------------------------------------ rans32 (warp per stream) */

__global__ void __launch_bounds__(32 * E8CU_DW) e8cu_rdec_kernel(const __grid_constant__ e8cu_dlaunch L)
{
    __shared__ unsigned char sym_of[E8CU_DW][4096];
    __shared__ uint32_t fst[E8CU_DW][256];
    __shared__ uint16_t wb[E8CU_DW][1024];
    __shared__ uint32_t hdr_s[E8CU_DW][3];
    const int w = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const unsigned lt = (1u << lane) - 1u;
    const uint64_t njobs = (uint64_t)L.n_frames * 5;
    for (uint64_t job = (uint64_t)blockIdx.x * E8CU_DW + w; job < njobs; job += (uint64_t)gridDim.x * E8CU_DW) {
        /* longest streams first (coords, halves, cosets, scales): they start in the first wave */
        const uint32_t s = e8cu_stream_order(job / L.n_frames), fi = (uint32_t)(job % L.n_frames);
        e8cu_dframe &f = L.fr[fi];
        if (f.method == 0) continue;
        const uint32_t N = f.raw_len[s], len = f.stored_len[s];
        const unsigned char *src = L.st + f.st[s];
        unsigned char *out = L.ws + f.ws[s];
        if (f.coding[s] == E8CU_CODING_STORED) {
            for (uint32_t i = lane; i < N; i += 32) out[i] = src[i];
            continue;
        }
        if (L.lane1 && len >= 1 && src[0] == 1) continue; /* one lane: e8cu_rdec1_kernel */
        /* coding 3: header parsed by lane 0 (table: as coding 2's, FORMAT §5.3) */
        if (lane == 0) {
            uint32_t ok = 0, off = 0, K = 0;
            if (N > 0 && len >= 3) {
                K = src[0];
                uint32_t nsym = src[1] | ((uint32_t)src[2] << 8), acc = 0;
                int last = -1;
                off = 3;
                ok = K >= 1 && K <= 32 && nsym >= 1 && nsym <= 256;
                for (int k = 0; k < 256; k++) fst[w][k] = 0;
                for (uint32_t k = 0; ok && k < nsym; k++) {
                    if (off >= len) { ok = 0; break; }
                    int sy = src[off++];
                    if (sy <= last) { ok = 0; break; }
                    last = sy;
                    uint32_t v = 0;
                    for (int sh = 0;; sh += 7) {
                        if (off >= len || sh > 14) { ok = 0; break; }
                        uint8_t b = src[off++];
                        v |= (uint32_t)(b & 0x7f) << sh;
                        if (!(b & 0x80)) break;
                    }
                    if (!ok || v == 0 || v > 4096u - acc) { ok = 0; break; }
                    fst[w][sy] = (acc << 13) | v;
                    for (uint32_t q = 0; q < v; q++) sym_of[w][acc + q] = (unsigned char)sy;
                    acc += v;
                }
                if (ok && (acc != 4096u || len - off < 4 * K || (len - off - 4 * K) % 2)) ok = 0;
            }
            hdr_s[w][0] = ok;
            hdr_s[w][1] = off;
            hdr_s[w][2] = K;
        }
        __syncwarp();
        const uint32_t ok0 = hdr_s[w][0], K = hdr_s[w][2];
        if (!ok0) {
            if (lane == 0) e8cu_bad(f, E8CU_DERR_RANS);
            continue;
        }
        const unsigned char *xs = src + hdr_s[w][1], *words = xs + 4 * K;
        const uint32_t W = (len - hdr_s[w][1] - 4 * K) / 2;
        uint32_t x = 0;
        if ((uint32_t)lane < K) x = xs[4 * lane] | ((uint32_t)xs[4 * lane + 1] << 8) |
                                   ((uint32_t)xs[4 * lane + 2] << 16) | ((uint32_t)xs[4 * lane + 3] << 24);
        uint32_t p = 0, wbase = 0, wfill = 0; /* words [wbase, wbase + wfill) are in wb */
        bool good = __all_sync(0xffffffffu, (uint32_t)lane >= K || x >= 65536u);
        const uint32_t R = (N + K - 1) / K;
        for (uint32_t r = 0; good && r < R; r++) {
            if (p + 32 > wbase + wfill && wbase + wfill < W) { /* refill the word buffer from p */
                __syncwarp();
                wbase = p;
                wfill = min(1024u, W - p);
                for (uint32_t k = lane; k < wfill; k += 32)
                    wb[w][k] = (uint16_t)(words[2 * (wbase + k)] | (words[2 * (wbase + k) + 1] << 8));
                __syncwarp();
            }
            const uint32_t i = r * K + lane;
            const bool act = (uint32_t)lane < K && i < N;
            bool need = false;
            if (act) {
                const uint32_t slot = x & 4095u;
                const unsigned char sy = sym_of[w][slot];
                const uint32_t e = fst[w][sy];
                x = (e & 0x1fffu) * (x >> 12) + slot - (e >> 13);
                out[i] = sy;
                need = x < 65536u;
            }
            const unsigned mask = __ballot_sync(0xffffffffu, need);
            const uint32_t cnt = __popc(mask);
            if (p + cnt > W) { good = false; break; }
            if (need) x = (x << 16) | wb[w][p + __popc(mask & lt) - wbase];
            p += cnt;
        }
        good = good && p == W && __all_sync(0xffffffffu, (uint32_t)lane >= K || x == 65536u);
        if (!good && lane == 0) e8cu_bad(f, E8CU_DERR_RANS);
    }
}

/* rans32 streams of one lane (K byte 1): one thread each, 32 streams per warp; symbols found by
 * binary search over the table's starts (column l of the shared arrays belongs to lane l). */
__global__ void __launch_bounds__(32) e8cu_rdec1_kernel(const __grid_constant__ e8cu_dlaunch L)
{
    __shared__ uint16_t sst[257][32];
    __shared__ unsigned char ssy[256][32];
    const uint32_t lane = threadIdx.x;
    const uint64_t njobs = (uint64_t)L.n_frames * 5;
    for (uint64_t job = (uint64_t)blockIdx.x * 32 + lane; job < njobs; job += (uint64_t)gridDim.x * 32) {
        const uint32_t s = (uint32_t)(job / L.n_frames), fi = (uint32_t)(job % L.n_frames);
        e8cu_dframe &f = L.fr[fi];
        if (f.method == 0 || f.coding[s] != E8CU_CODING_RANS32) continue;
        const uint32_t N = f.raw_len[s], len = f.stored_len[s];
        const unsigned char *src = L.st + f.st[s];
        if (len < 1 || src[0] != 1) continue; /* the warp kernel's */
        unsigned char *out = L.ws + f.ws[s];
        /* table, as the warp kernel checks it */
        uint32_t off = 3, acc = 0, nsym = 0;
        bool ok = N > 0 && len >= 3;
        if (ok) {
            nsym = src[1] | ((uint32_t)src[2] << 8);
            ok = nsym >= 1 && nsym <= 256;
        }
        int last = -1;
        for (uint32_t k = 0; ok && k < nsym; k++) {
            if (off >= len) { ok = false; break; }
            int sy = src[off++];
            if (sy <= last) { ok = false; break; }
            last = sy;
            uint32_t v = 0;
            for (int sh = 0;; sh += 7) {
                if (off >= len || sh > 14) { ok = false; break; }
                uint8_t b = src[off++];
                v |= (uint32_t)(b & 0x7f) << sh;
                if (!(b & 0x80)) break;
            }
            if (!ok || v == 0 || v > 4096u - acc) { ok = false; break; }
            sst[k][lane] = (uint16_t)acc;
            ssy[k][lane] = (unsigned char)sy;
            acc += v;
        }
        if (ok && (acc != 4096u || len - off < 4 || (len - off - 4) % 2)) ok = false;
        uint32_t x = 0, p = 0, W = 0;
        const unsigned char *words = src + off + 4;
        if (ok) {
            sst[nsym][lane] = 4096;
            x = src[off] | ((uint32_t)src[off + 1] << 8) | ((uint32_t)src[off + 2] << 16) | ((uint32_t)src[off + 3] << 24);
            W = (len - off - 4) / 2;
            ok = x >= 65536u;
        }
        for (uint32_t i = 0; ok && i < N; i++) {
            const uint32_t slot = x & 4095u;
            uint32_t lo = 0, hi = nsym - 1;
            while (lo < hi) {
                uint32_t mid = (lo + hi + 1) >> 1;
                if (sst[mid][lane] <= slot) lo = mid; else hi = mid - 1;
            }
            const uint32_t st = sst[lo][lane], fk = sst[lo + 1][lane] - st;
            out[i] = ssy[lo][lane];
            x = fk * (x >> 12) + slot - st;
            if (x < 65536u) {
                if (p >= W) { ok = false; break; }
                x = (x << 16) | words[2 * p] | ((uint32_t)words[2 * p + 1] << 8);
                p++;
            }
        }
        if (!ok || p != W || x != 65536u) e8cu_bad(f, E8CU_DERR_RANS);
    }
}

/* ------------------------------------------------------------ parse (block per frame) */

/* This thread's share of the count of 255 bytes in p[0..len), by 16-byte aligned loads (the
 * bytes around the range that they touch belong to the same workspace allocation). */
__device__ __forceinline__ uint32_t e8cu_count255(const unsigned char *p, uint64_t len)
{
    const uintptr_t lo = (uintptr_t)p, hi = lo + len;
    uint32_t c = 0;
    for (uintptr_t a = (lo & ~(uintptr_t)15) + 16 * (uintptr_t)threadIdx.x; a < hi; a += 16 * (uintptr_t)blockDim.x) {
        const uint4 w = *(const uint4 *)a;
        const uint32_t ws[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
        for (int k = 0; k < 4; k++) {
            const uintptr_t wa = a + 4 * k;
            /* bytes [b0, b1) of this word are in range; a word wholly at or past hi has none
             * (hi - wa would wrap: the shift below saw a huge count and took all 4 bytes) */
            const uintptr_t b0 = lo > wa ? lo - wa : 0, b1 = hi <= wa ? 0 : hi < wa + 4 ? hi - wa : 4;
            if (b0 >= b1) continue;
            const uint32_t valid = (uint32_t)(((1ull << (8 * b1)) - 1) & ~((1ull << (8 * b0)) - 1));
            c += __popc(__vcmpeq4(ws[k], 0xffffffffu) & valid) / 8;
        }
    }
    return c;
}

__device__ __forceinline__ int e8cu_finite_bits(const unsigned char *p, uint64_t i, uint32_t dtype)
{
    if (dtype == 3) {
        uint32_t u = p[4 * i] | ((uint32_t)p[4 * i + 1] << 8) | ((uint32_t)p[4 * i + 2] << 16) | ((uint32_t)p[4 * i + 3] << 24);
        return (u & 0x7f800000u) != 0x7f800000u;
    }
    uint32_t h = p[2 * i] | ((uint32_t)p[2 * i + 1] << 8), m = dtype == 1 ? 0x7c00u : 0x7f80u;
    return (h & m) != m;
}

__global__ void __launch_bounds__(E8CU_ET) e8cu_parse_kernel(const __grid_constant__ e8cu_dlaunch L)
{
    __shared__ unsigned long long sm[E8CU_ET / 32 + 1];
    const uint32_t tid = threadIdx.x, n = L.n, H = L.H;
    const uint32_t es = L.src_dtype == 3 ? 4 : 2;
    for (uint32_t fi = blockIdx.x; fi < L.n_frames; fi += gridDim.x) {
        e8cu_dframe &f = L.fr[fi];
        /* raw-kept elements (stream 7, or the protected layer's one stream) */
        {
            const uint32_t rs = f.method == 0 ? 0 : 7;
            const unsigned char *src = L.st + f.st[rs];
            unsigned char *dst = L.q + f.off_raw;
            int fin = 1;
            for (uint64_t k = tid; k < (uint64_t)f.n_raw_el * es; k += E8CU_ET) dst[k] = src[k];
            for (uint64_t k = tid; k < f.n_raw_el; k += E8CU_ET) fin &= e8cu_finite_bits(src, k, L.src_dtype);
            if (!__syncthreads_and(fin) && tid == 0) e8cu_bad(f, E8CU_DERR_RAW);
        }
        if (f.method == 0) continue;
        const uint32_t Q = f.n_q, R8 = n / 8;
        /* modes and means (stream 6), sequentially */
        if (tid == 0) {
            const unsigned char *m = L.st + f.st[6];
            const uint32_t ml = f.raw_len[6];
            uint32_t o = 0;
            int bad = 0;
            for (uint32_t h = 0; h < H && !bad; h++) {
                if (o >= ml) { bad = 1; break; }
                uint32_t mode = m[o++];
                if (mode < 1 || mode > 3) { bad = 1; break; }
                if (Q > 0) L.hd[f.head0 + h].mode = mode;
                for (uint32_t j = 0; mode == 3 && j < n; j++) {
                    uint64_t v = 0;
                    int done = 0;
                    for (int k = 0; k < 5 && o < ml; k++) {
                        uint8_t b = m[o++];
                        v |= (uint64_t)(b & 0x7f) << (7 * k);
                        if (!(b & 0x80)) { done = 1; break; }
                    }
                    if (!done || v > 0xffffffffull) { bad = 1; break; }
                    uint32_t z = (uint32_t)v;
                    if (Q > 0) L.M[(size_t)(f.head0 + h) * n + j] = (int32_t)((z >> 1) ^ (0u - (z & 1u)));
                }
            }
            if (bad || o != ml) e8cu_bad(f, E8CU_DERR_MODES);
        }
        /* scales (streams 0, 1) */
        {
            const unsigned char *hi = L.ws + f.ws[0], *lo = L.ws + f.ws[1];
            uint16_t *sc = (uint16_t *)(L.q + f.off_scales);
            int ok = 1;
            for (uint64_t v = tid; v < (uint64_t)H * Q; v += E8CU_ET) {
                uint32_t s = ((uint32_t)hi[v] << 8) | lo[v];
                ok &= s <= 0x7300u;
                sc[v] = (uint16_t)s;
            }
            if (!__syncthreads_and(ok) && tid == 0) e8cu_bad(f, E8CU_DERR_SCALE);
        }
        /* escape values (stream 5): a byte without the high bit ends a value */
        const unsigned char *E = L.st + f.st[5];
        const uint32_t elen = f.raw_len[5];
        uint32_t *ev = L.ev + f.ev;
        unsigned long long nval = 0;
        int eok = 1;
        for (uint32_t t0 = 0; t0 < elen; t0 += E8CU_ET) {
            const uint32_t pos = t0 + tid;
            const int term = pos < elen && !(E[pos] & 0x80);
            unsigned long long tot;
            unsigned long long idx = e8cu_block_scan(term, sm, &tot);
            if (term) {
                uint32_t k = 1;
                while (k <= 5 && pos >= k && (E[pos - k] & 0x80)) k++;
                /* bytes pos-k+1 .. pos form the value (k of them) */
                if (k > 5) eok = 0;
                else {
                    uint64_t v = 0;
                    for (uint32_t m = 0; m < k; m++) v |= (uint64_t)(E[pos - k + 1 + m] & 0x7f) << (7 * m);
                    if (v > 0x10000u) eok = 0;
                    ev[nval + idx] = (uint32_t)v;
                }
            }
            nval += tot;
        }
        if (elen > 0 && (E[elen - 1] & 0x80)) eok = 0;
        /* escapes per head: 255 symbols in its coords and halves */
        const unsigned char *cs = L.ws + f.ws[3], *hs = L.ws + f.ws[4];
        unsigned long long n3 = 0, n4 = 0;
        if (Q > 0) {
            for (uint32_t h = 0; h < H; h++) {
                const uint64_t e7 = (uint64_t)Q * R8 * 7, e1 = (uint64_t)Q * R8;
                /* low half: stream 3's, high half: stream 4's */
                unsigned long long c = e8cu_count255(cs + h * e7, e7) |
                                       ((unsigned long long)e8cu_count255(hs + h * e1, e1) << 32);
                unsigned long long t = e8cu_block_sum(c, sm);
                if (tid == 0) {
                    e8cu_dhead &hd = L.hd[f.head0 + h];
                    hd.base3 = (uint32_t)n3;
                    hd.base4 = (uint32_t)n4; /* + n3 of the whole frame, added below */
                    hd.nesc = (uint32_t)t + (uint32_t)(t >> 32);
                }
                n3 += (uint32_t)t;
                n4 += t >> 32;
            }
        }
        __syncthreads();
        if (Q > 0 && tid < H) L.hd[f.head0 + tid].base4 += (uint32_t)n3;
        if (!__syncthreads_and(eok) || nval != n3 + n4) {
            if (tid == 0) e8cu_bad(f, E8CU_DERR_ESCAPES);
        }
        __syncthreads();
    }
}

/* ------------------------------------------------------------ un-layout (block per head) */

__global__ void __launch_bounds__(E8CU_ET) e8cu_unlay_kernel(const __grid_constant__ e8cu_dlaunch L)
{
    __shared__ int32_t Ms[512];
    __shared__ int32_t tile[E8CU_ET * 8];
    __shared__ int32_t carry[512];
    __shared__ unsigned long long sm[E8CU_ET / 32 + 1];
    const uint32_t n = L.n, tid = threadIdx.x, R8 = n / 8, TR = E8CU_ET / R8, used = TR * R8;
    for (uint32_t hi = blockIdx.x; hi < L.n_heads; hi += gridDim.x) {
        const e8cu_dhead &hd = L.hd[hi];
        e8cu_dframe &f = L.fr[hd.frame];
        /* thread 0's read of the status decides for the whole block */
        if (__syncthreads_or(tid == 0 && *(volatile int32_t *)&f.status != 0)) continue;
        const uint32_t Q = f.n_q, mode = hd.mode;
        for (uint32_t j = tid; j < n; j += E8CU_ET) {
            Ms[j] = mode == 3 ? L.M[(size_t)hi * n + j] : 0;
            carry[j] = 0;
        }
        __syncthreads();
        const unsigned char *cst = L.ws + f.ws[3] + (size_t)hd.h * Q * R8 * 7;
        const unsigned char *hst = L.ws + f.ws[4] + (size_t)hd.h * Q * R8;
        const unsigned char *cos = L.ws + f.ws[2];
        const uint32_t *ev = L.ev + f.ev;
        int16_t *p2 = (int16_t *)(L.q + f.off_points2) + (size_t)hd.h * Q * n;
        uint32_t r3 = hd.base3, r4 = hd.base4;
        int ok = 1;
        for (uint32_t t0 = 0; t0 < Q; t0 += TR) {
            const uint32_t t = t0 + tid / R8, b = tid % R8;
            const bool on = tid < used && t < Q;
            uint32_t z[8];
            uint32_t l3 = 0, l4 = 0;
            if (on) {
                const unsigned char *c = cst + ((size_t)t * R8 + b) * 7;
#pragma unroll
                for (int i = 0; i < 7; i++) { z[i] = c[i]; l3 += z[i] == 255u; }
                z[7] = hst[(size_t)t * R8 + b];
                l4 = z[7] == 255u;
            }
            if (hd.nesc) {
                unsigned long long tot;
                unsigned long long ex = e8cu_block_scan(((unsigned long long)l4 << 32) | l3, sm, &tot);
                if (on) {
                    uint32_t k3 = r3 + (uint32_t)ex;
#pragma unroll
                    for (int i = 0; i < 7; i++)
                        if (z[i] == 255u) z[i] = 255u + ev[k3++];
                    if (z[7] == 255u) z[7] = 255u + ev[r4 + (uint32_t)(ex >> 32)];
                }
                r3 += (uint32_t)tot;
                r4 += (uint32_t)(tot >> 32);
            }
            int32_t S[8];
            if (on) {
#pragma unroll
                for (int i = 0; i < 8; i++) {
                    int64_t v = (int32_t)((z[i] >> 1) ^ (0u - (z[i] & 1u)));
                    if (mode == 3) v += Ms[8 * b + i];
                    if (mode != 2 && (v < -16384 || v > 16383)) ok = 0;
                    S[i] = (int32_t)v;
                }
            }
            if (mode == 2) { /* running sums down each column */
                if (on)
#pragma unroll
                    for (int i = 0; i < 8; i++) tile[(tid / R8) * n + 8 * b + i] = S[i];
                __syncthreads();
                const uint32_t rows = min(TR, Q - t0);
                for (uint32_t j = tid; j < n; j += E8CU_ET) {
                    int64_t a = carry[j];
                    for (uint32_t r = 0; r < rows; r++) {
                        int64_t v = tile[r * n + j] + ((t0 + r) ? a : 0);
                        if (v < -16384 || v > 16383) { ok = 0; v = 0; }
                        tile[r * n + j] = (int32_t)v;
                        a = v;
                    }
                    carry[j] = (int32_t)a;
                }
                __syncthreads();
                if (on)
#pragma unroll
                    for (int i = 0; i < 8; i++) S[i] = tile[(tid / R8) * n + 8 * b + i];
                __syncthreads();
            }
            if (on) {
                const uint64_t bb = ((uint64_t)hd.h * Q + t) * R8 + b;
                const int32_t c = (cos[bb >> 3] >> (bb & 7)) & 1;
                int32_t par = 0;
#pragma unroll
                for (int i = 0; i < 7; i++) par += S[i];
                int32_t v[8];
#pragma unroll
                for (int i = 0; i < 8; i++) {
                    int32_t qi = i < 7 ? S[i] : 2 * S[7] + (par & 1);
                    v[i] = 2 * qi + c;
                    if (v[i] < -32768 || v[i] > 32767) ok = 0;
                }
                uint4 o;
                o.x = (uint32_t)(uint16_t)v[0] | ((uint32_t)(uint16_t)v[1] << 16);
                o.y = (uint32_t)(uint16_t)v[2] | ((uint32_t)(uint16_t)v[3] << 16);
                o.z = (uint32_t)(uint16_t)v[4] | ((uint32_t)(uint16_t)v[5] << 16);
                o.w = (uint32_t)(uint16_t)v[6] | ((uint32_t)(uint16_t)v[7] << 16);
                *(uint4 *)(p2 + (size_t)t * n + 8 * b) = o;
            }
        }
        if (!__syncthreads_and(ok) && tid == 0) e8cu_bad(f, E8CU_DERR_COORD);
        __syncthreads();
    }
}

static unsigned e8cu_dgrid(uint64_t need, unsigned cap) { return (unsigned)(need < cap ? (need ? need : 1) : cap); }

extern "C" int e8cu_launch_entropy_decode(const e8cu_dlaunch *L, cudaStream_t stream)
{
    if (L->n_frames == 0) return 0;
    e8cu_prof(NULL, stream);
    e8cu_rdec_kernel<<<e8cu_dgrid(((uint64_t)L->n_frames * 5 + E8CU_DW - 1) / E8CU_DW, 65535), 32 * E8CU_DW, 0,
                       stream>>>(*L);
    cudaError_t e = cudaGetLastError();
    e8cu_prof("dec rans32", stream);
    if (e == cudaSuccess && L->lane1) {
        e8cu_rdec1_kernel<<<e8cu_dgrid(((uint64_t)L->n_frames * 5 + 31) / 32, 65535), 32, 0, stream>>>(*L);
        e = cudaGetLastError();
        e8cu_prof("dec rans32 1-lane", stream);
    }
    if (e == cudaSuccess) {
        e8cu_parse_kernel<<<e8cu_dgrid(L->n_frames, 65535), E8CU_ET, 0, stream>>>(*L);
        e = cudaGetLastError();
        e8cu_prof("dec parse", stream);
    }
    if (e == cudaSuccess && L->n_heads) {
        e8cu_unlay_kernel<<<e8cu_dgrid(L->n_heads, 65535), E8CU_ET, 0, stream>>>(*L);
        e = cudaGetLastError();
        e8cu_prof("dec unlayout", stream);
    }
    return (int)e;
}
