/* e8cu_entropy.h: what the host half (e8cu_entropy.c) and the entropy kernels (e8cu_enc.cu,
 * e8cu_dec.cu) share: the per-frame and per-head records of one entropy launch. Not installed;
 * no device code. The byte format is codec/FORMAT.md §5 (v2): streams 0-7 of method 1, coding
 * 3 ("rans32", /work/team/rans32.md) for streams 0-4 when it is shorter, stored otherwise.
 *
 * Encode, per batch (all on one stream, after the quantize kernels):
 *   scos   (block per frame)  streams 0-2 (scales hi/lo, coset bits) + their histograms
 *   heads  (block per KV head) decorrelation choice (FORMAT §5.2: costs of modes 1-3, the mean
 *                              M), escape and mode-stream byte counts, streams 3-4 symbols and
 *                              their histograms
 *   rans   (warp per stream)   12-bit frequencies (FORMAT §5.3 rule), table, 32/8/1-lane rANS
 *                              (one ballot + popc per round places the renormalization words)
 *   scan   (one block)         frame sizes -> offsets in the compact output
 *   place  (block per frame)   streams 0-4 (coded or stored), 6 (modes), 7 (raw) at their place
 *   escape (block per KV head) stream 5 (LEB128 escapes) at its place, only heads that have any
 * then the host writes each frame's header, descriptors and CRC32Cs into the 160-byte (69 for a
 * protected layer) gap left before its streams. */
#ifndef E8CU_ENTROPY_H
#define E8CU_ENTROPY_H

#include <stddef.h>
#include <stdint.h>
#include <cuda_runtime_api.h>

#ifdef __cplusplus
extern "C" {
#endif

#define E8CU_NS 8               /* streams of method 1 */
#define E8CU_CODING_STORED 0
#define E8CU_CODING_RANS32 3
#define E8CU_FRAME_VERSION 2    /* FORMAT v2: coding 3 exists */
#define E8CU_HDR_E8 160u        /* 52 + 13·8 + 4 */
#define E8CU_HDR_RAW 69u        /* 52 + 13 + 4 */

/* One frame of an entropy launch (device array; the host fills the inputs, the kernels the
 * outputs, the host reads it back). Offsets in bytes. */
typedef struct e8cu_eframe {
    /* inputs */
    uint64_t off_scales, off_points2, off_raw; /* in the qbatch */
    uint64_t ws[5];        /* streams 0-4 raw bytes, in the stream workspace */
    uint64_t cs[5];        /* coded slots of streams 0-4 (capacity A16(raw_len)), coded workspace */
    uint32_t raw_len[E8CU_NS]; /* 0-4 and 7 by the host; 5 and 6 by the kernels */
    uint32_t method, n_q, n_raw, head0; /* head0: this frame's first record in the head array */
    /* outputs */
    uint64_t frame_off;    /* in the compact output (16-aligned) */
    uint32_t frame_size;
    uint32_t stored_len[E8CU_NS];
    uint32_t hsz[5], nwords[5]; /* coding 3: bytes before the words, number of u16 words */
    uint8_t  coding[E8CU_NS];
} e8cu_eframe;

/* One KV head of an E8 frame with quantized tokens. */
typedef struct e8cu_ehead {
    uint32_t frame, h;     /* inputs */
    uint32_t mode;         /* 1..3 */
    uint32_t esc3, esc4;   /* escape bytes of its coords (stream 3) and halves (stream 4) */
    uint32_t mlen;         /* its bytes in the mode stream */
} e8cu_ehead;

typedef struct e8cu_elaunch {
    unsigned char *q;      /* qbatch (device) */
    e8cu_eframe *fr;       /* [n_frames] */
    e8cu_ehead *hd;        /* [n_heads] */
    int32_t *M;            /* [n_heads][head_dim]: means of mode 3 */
    uint32_t *hist;        /* [n_frames][5][256] */
    unsigned char *ws, *cw, *out; /* stream workspace, coded slots, compact frames */
    uint64_t out_cap;      /* bytes of out */
    uint64_t *total;       /* device u64: bytes of the compact output */
    uint32_t n_frames, n_heads, H, n, esz, decor;
} e8cu_elaunch;

/* ---- decode: the host checks headers and CRCs and stages the frames' stream bytes on the
 * device; then per batch:
 *   rans   (warp per stream)   streams 0-4: coding 3 decoded, stored copied, to the workspace
 *   parse  (block per frame)   modes (stream 6) and the means, escapes (stream 5, LEB128 in
 *                              parallel), escape counts per head, scales and raw tokens to the
 *                              qbatch, with the CPU decoder's checks
 *   unlay  (block per KV head) symbols + escapes -> R -> decorrelation undone -> points x 2 into
 *                              the qbatch; then the dequantize kernels as before */
typedef struct e8cu_dframe {
    uint64_t off_scales, off_points2, off_raw; /* in the qbatch */
    uint64_t st[E8CU_NS];  /* stored bytes of stream s in the staged copy */
    uint64_t ws[5];        /* decoded streams 0-4 in the workspace */
    uint64_t ev;           /* escape values (u32, at most raw_len[5] of them) in the value area */
    uint32_t raw_len[E8CU_NS], stored_len[E8CU_NS];
    uint8_t  coding[E8CU_NS];
    uint32_t method, n_q, n_raw, head0;
    uint32_t n_raw_el;     /* raw-kept elements (stream 7 or the protected layer) */
    int32_t  status;       /* output: 0, or the E8CU_DERR_* reason it is corrupt */
} e8cu_dframe;

typedef struct e8cu_dhead {
    uint32_t frame, h;     /* inputs */
    uint32_t mode, base3, base4, nesc; /* by the parse kernel */
} e8cu_dhead;

enum { E8CU_DERR_RANS = 1, E8CU_DERR_MODES, E8CU_DERR_ESCAPES, E8CU_DERR_SCALE, E8CU_DERR_RAW,
       E8CU_DERR_COORD, E8CU_DERR_POINT };

typedef struct e8cu_dlaunch {
    unsigned char *q;      /* qbatch (device) */
    e8cu_dframe *fr;
    e8cu_dhead *hd;
    int32_t *M;            /* [n_heads][head_dim] */
    const unsigned char *st; /* staged stream bytes */
    unsigned char *ws;     /* decoded streams 0-4 */
    uint32_t *ev;          /* escape values */
    uint32_t n_frames, n_heads, H, n, src_dtype;
    uint32_t lane1;        /* 1: one-lane streams (K = 1) by e8cu_rdec1_kernel, 0: by the warp kernel */
} e8cu_dlaunch;

int e8cu_launch_entropy_decode(const e8cu_dlaunch *L, cudaStream_t stream);

/* Profiling (E8CU_PROFILE=1 in the environment; off otherwise, at no cost but a flag test):
 * waits for stream and prints to stderr the time since the previous mark, labelled what
 * (what NULL: only sets the mark). For tuning: it serializes the pipeline. */
void e8cu_prof(const char *what, cudaStream_t stream);

/* Groups a batch of el elements is cut into for the host/device pipeline: 1 to 8 (at most n),
 * of about E8CU_GROUP_ELEMS elements each (environment; unset: 2^26; 0: one group). */
size_t e8cu_groups(size_t el, size_t n);

/* Enqueues the encode kernels above on stream (cudaError_t). The host must have zeroed hist. */
int e8cu_launch_entropy_encode(const e8cu_elaunch *L, cudaStream_t stream);
/* Enqueues place + escape only (again, after out grew): cudaError_t. */
int e8cu_launch_entropy_place(const e8cu_elaunch *L, cudaStream_t stream);

#ifdef __cplusplus
}
#endif
#endif
