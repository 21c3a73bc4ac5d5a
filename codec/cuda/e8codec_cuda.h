/*
 * e8codec_cuda.h: libe8codec_cuda, the E8 KV codec on NVIDIA GPUs.
 *
 * WHAT IT IS
 *   libe8codec (codec/e8codec.h) as CUDA kernels, so that an inference engine compresses its KV
 *   cache where it lives, in device memory, and restores it there:
 *     encode:  device tensor --quantize kernels--> device "qbatch" (E8 points x 2, scales as
 *              bf16 bits, raw-kept tokens: the e8c_qlayer arrays) --entropy kernels (FORMAT v2
 *              layout: scales, coset bits, zigzag symbols with escapes, the decorrelation choice
 *              per KV head, modes; coding 3 "rans32", one warp per stream)--> the frames' stream
 *              bytes, back to back --one compact copy--> host --headers, descriptors, CRC32C
 *              on host threads--> frames;
 *     decode:  frames --header and CRC checks on host threads, one compact copy--> device
 *              --rans32 decode, layout undone into the qbatch--> --dequantize kernels--> device
 *              tensor.
 *   The kernels do RoPE removal/restore (every variant e8codec.h names: the cos/sin tables come
 *   from e8c_rope_cos_sin), the randomized Hadamard rotation (signs from e8c_hadamard_signs),
 *   the per-vector scale and the strict E8 nearest point (Conway & Sloane, IEEE Trans. IT
 *   28(2), 1982: both cosets, parity fixed on the coordinate with the largest rounding
 *   residual), following codec/FORMAT.md operation by operation, and the byte format of
 *   FORMAT.md §5 (rANS: J. Duda, arXiv:0902.0271, 2009; K interleaved states, F. Giesen,
 *   arXiv:1402.3392, 2014). Frames are therefore BYTE-IDENTICAL to the CPU library's
 *   (e8c_frame_encode) for the same input, and decoding gives the same values as
 *   e8c_frame_decode, also for damaged frames (the same error); tests/gpu/ checks all three.
 *   ENTROPY CONFIGS: the GPU codes frames itself for config.entropy = E8C_ENTROPY_RANS32 (the
 *   default). For E8C_ENTROPY_BEST and _V1 (zstd: libzstd's bytes cannot be made on the GPU)
 *   e8cu_pack falls back to the host packer (e8c_qlayer_pack on the worker threads: the CPU
 *   path's own code, so the bytes are still the CPU's) and e8cu_pack_frames refuses with
 *   E8C_ERR_CONFIG; decoding frames that use zstd or coding 2 goes through the host unpacker
 *   the same way. E8CU_GPU_ENTROPY=0 in the environment makes every config use the host paths
 *   (same bytes, far slower).
 *
 * PERFORMANCE (H200, make bench-gpu: 32 layers x 8 KV heads x head_dim 128 x 32K tokens,
 * fp16, frames of 256 tokens; device copy 2.1 TB/s counted as bytes copied per second)
 *   quantize ~335 GB/s and dequantize ~700 GB/s of fp16 KV on the device; end to end with
 *   the entropy stage 104 GB/s encode (e8cu_pack_frames) and 139 GB/s decode with the grouped
 *   pipeline (the default; 79 / 91 GB/s in one group), against
 *   ~1.1-2.5 GB/s for the CPU path on 16 cores: bench/gpu/NOTES.md has the measured table.
 *   Tuning variables (environment; results never change): E8CU_GROUP_ELEMS (elements per
 *   group of the pipelined entropy stage, at most 8 groups; unset: 2^26; 0: one group), E8CU_STREAMS=1 (groups on the
 *   caller's stream only), E8CU_DEC_LANE1=0 (one-lane rans32 streams decoded by the warp
 *   kernel), E8CU_PROFILE=1 (per-stage times on stderr; serializes).
 *
 * BATCHES
 *   One call covers many frames (layers, K and V, chunks): an array of e8cu_item, each one
 *   frame's [n_kv_heads][n_tokens][head_dim] tensor in device memory with its e8c_frame_params.
 *   One kernel launch covers up to 192 frames (plus one launch for raw-kept tokens, if any);
 *   on Hopper and later the encode call's consecutive launches overlap (programmatic dependent
 *   launch: a launch may start where the previous one's last blocks leave multiprocessors idle;
 *   completion order, and so everything the stream does next, is unchanged; the call's first
 *   launch waits for the stream's previous work as usual). All items of a call share the context's fingerprint; n_tokens, positions, layer and kind
 *   vary per item. The tuning variables E8CU_NARROW, E8CU_WIDE_MINBLOCKS, E8CU_Q_MINBLOCKS,
 *   E8CU_DQ_MINBLOCKS, E8CU_FAST_Q_MINBLOCKS, E8CU_FAST_DQ_MINBLOCKS, E8CU_Q_GRID (waves of
 *   blocks per quantize launch, 1..64, default 8), E8CU_W16=0 (no fp16/bf16-specialised
 *   quantize kernel), E8CU_FAST=0 (the general kernels, whose every decision is the exact
 *   rule) and E8CU_PDL=0 (plain, non-overlapping launches) change only the kernels' layout and
 *   speed, never a result.
 *
 * STREAMS AND EVENTS
 *   Functions ending in _async enqueue work on `stream` (the last argument) and return without
 *   waiting for it. If `wait_event` is not NULL, the work first waits (cudaStreamWaitEvent) for
 *   that event, recorded by the producer of the input (e.g. the attention kernel writing the
 *   KV cache on another stream): no byte is read before the event completes. The caller keeps
 *   every buffer it passed alive and unmodified until the stream has passed the work.
 *   Functions without _async return when their results are in place.
 *
 * MEMORY
 *   The caller owns every buffer. Ask sizes first: e8cu_qbatch_size (device qbatch, and the
 *   same size of pinned host staging for e8cu_pack / e8cu_unpack). Device pointers are named
 *   d_*, pinned host pointers h_*. The context owns small device tables (Hadamard signs; RoPE
 *   cos/sin for the positions last used, grown on demand by a synchronous upload), one e8c_ctx
 *   per host worker thread, and the entropy stage's device workspace (about 2.5 bytes per
 *   quantized element of the largest batch seen; grown by cudaMalloc when a larger batch
 *   comes, which synchronizes the device; freed with the context). When a batch's coded frames
 *   (or, decoding, its stream bytes) do not fit the h_q staging, that call takes the host path.
 *
 * ERRORS
 *   The CPU library's error space (E8C_ERR_*, e8c_error_name) plus E8CU_ERR_CUDA for a failed
 *   CUDA call; e8cu_ctx_last_error() says which call and why. Argument and shape errors are
 *   found before anything is enqueued. Data errors found on the device (NaN/inf input:
 *   E8C_ERR_NONFINITE; a raw-kept value outside the source dtype: E8C_ERR_RANGE) are reported
 *   by e8cu_pack for the item concerned, exactly as e8c_frame_encode reports them.
 *
 * THREAD SAFETY
 *   An e8cu_ctx is used by one host thread at a time; use one context per thread (they may
 *   share a device). Host work inside e8cu_pack / e8cu_unpack is spread over the context's
 *   worker threads.
 */
#ifndef E8CODEC_CUDA_H
#define E8CODEC_CUDA_H

#include <stddef.h>
#include <stdint.h>
#include <cuda_runtime_api.h>
#include "codec/e8codec.h"

#ifdef __cplusplus
extern "C" {
#endif

/* A CUDA runtime call failed (out of device memory, launch failure, invalid device
 * pointer...). The context's last error names the call and the CUDA error string. */
#define E8CU_ERR_CUDA (-100)

/* Name of any code: E8CU_ERR_CUDA or an e8c_error_name() one. */
const char *e8cu_error_name(int64_t r);

typedef struct e8cu_ctx e8cu_ctx;

/* Creates a context for one fingerprint on the current CUDA device (cudaGetDevice), with
 * n_threads host worker threads for packing/unpacking (0 = the machine's online CPUs, at
 * most 64). Uploads the Hadamard signs (synchronously). NULL on error, *err set (err may be
 * NULL): the fingerprint's validation error, E8C_ERR_NOMEM or E8CU_ERR_CUDA. */
e8cu_ctx *e8cu_ctx_create(const e8c_fingerprint *fp, unsigned n_threads, int64_t *err);
/* Frees everything the context owns (device tables included); NULL is a no-op. The caller
 * makes sure no enqueued work still uses it (synchronize the streams first). */
void e8cu_ctx_free(e8cu_ctx *ctx);
/* Message of the last failed call on this ctx ("" if none). */
const char *e8cu_ctx_last_error(const e8cu_ctx *ctx);

/* One frame of a batch: a tensor [n_kv_heads][n_tokens][head_dim] in DEVICE memory
 * (t.data is a device pointer, 16-byte aligned; strides in elements, stride_dim must be 1 and
 * stride_head, stride_token multiples of 8: the layout of every engine's KV cache, views such
 * as [tokens][heads][dim] included. Other layouts are refused with E8C_ERR_SHAPE). For
 * decoding, the same describes the output tensor (its dtype is the output dtype). */
typedef struct e8cu_item {
    e8c_frame_params p; /* layer, kind, n_tokens, first_pos, seq_len, rope_seq_len */
    e8c_tensor       t; /* device tensor; dtype fp16, bf16 or fp32 */
} e8cu_item;

/* What the numeric half of a frame needs besides the arrays (e8c_qlayer's scalar fields):
 * filled by e8cu_quantize_async (from the policy, FORMAT.md §6) or e8cu_unpack (from the
 * frame header); read by e8cu_pack and e8cu_dequantize_async. Host memory, one per item. */
typedef struct e8cu_qmeta {
    uint32_t method;       /* 0: whole layer raw (protected), 1: E8 */
    uint32_t n_raw_head;   /* leading tokens kept raw (sinks) */
    uint32_t n_raw_tail;   /* trailing tokens kept raw (recent window) */
    uint32_t first_pos;    /* stored position of token 0 */
    uint32_t rope_seq_len; /* stored rope_seq_len (resolved, never 0) */
} e8cu_qmeta;

/* Upper bound, in bytes, of the qbatch for these items: the device buffer of
 * e8cu_quantize_async / e8cu_dequantize_async, and the same size of pinned host memory for
 * e8cu_pack / e8cu_unpack (cudaMallocHost). The qbatch holds, per item, the e8c_qlayer arrays
 * (bf16 scales, int16 points x 2, raw-kept tokens in the source dtype), about
 * (2 + source dtype size) bytes per element. *bytes set on success. 0 or E8C_ERR_ARG /
 * _SHAPE / _DTYPE / _LIMIT / _POSITION / _LAYER_RANGE (the item's index in the message). */
int64_t e8cu_qbatch_size(e8cu_ctx *ctx, size_t n, const e8cu_item *items, size_t *bytes);

/* Makes RoPE cos/sin tables for positions [first_pos, first_pos + n_positions) at
 * rope_seq_len (0: first_pos + n_positions) resident on the device (synchronous). The calls
 * below do this on demand for the positions they meet; calling it first moves that cost out
 * of a latency-critical path. A no-op for a model without RoPE. 0 or an error. */
int64_t e8cu_ctx_reserve_positions(e8cu_ctx *ctx, uint32_t first_pos, uint32_t n_positions,
                                   uint32_t rope_seq_len);

/* ------------------------------------------------------------------ encode */

/* Quantization stage of n frames: reads each item's device tensor after wait_event (if not
 * NULL), writes the qbatch d_q (qbatch_bytes >= e8cu_qbatch_size) and meta[i] for each item
 * (host, immediately). One kernel launch covers up to 192 items (plus one for raw-kept
 * tokens). 0 or an error, nothing enqueued then: E8C_ERR_ARG / _SHAPE / _DTYPE / _LIMIT /
 * _POSITION / _LAYER_RANGE / _DST_SIZE (qbatch too small) / E8CU_ERR_CUDA. NaN/inf or
 * out-of-range input is found on the device and reported by e8cu_pack. */
int64_t e8cu_quantize_async(e8cu_ctx *ctx, size_t n, const e8cu_item *items, e8cu_qmeta *meta,
                            void *d_q, size_t qbatch_bytes, cudaEvent_t wait_event,
                            cudaStream_t stream);

/* Entropy stage: waits for `stream`; with entropy = rans32 codes the frames on the GPU (see
 * e8cu_pack_frames), copies them back compact into the pinned h_q and from there into dsts[i];
 * otherwise copies the used part of d_q into h_q in one transfer and packs on the worker
 * threads with e8c_qlayer_pack (layout, decorrelation, zstd, CRC32C), the very code of the CPU
 * path. Frame i goes to dsts[i] (dst_caps[i] bytes; e8c_frame_max_size(n_tokens) always
 * suffices); sizes[i] receives its size. Returns 0, or the
 * error of the lowest failing item (E8C_ERR_NONFINITE / _RANGE for bad input, as
 * e8c_frame_encode reports it; E8C_ERR_DST_SIZE; E8CU_ERR_CUDA), its index in the message. */
int64_t e8cu_pack(e8cu_ctx *ctx, size_t n, const e8cu_item *items, const e8cu_qmeta *meta,
                  const void *d_q, void *h_q, size_t qbatch_bytes, void *const *dsts,
                  const size_t *dst_caps, size_t *sizes, cudaStream_t stream);

/* Entropy stage on the GPU into one host buffer (entropy = rans32 configs only; others:
 * E8C_ERR_CONFIG, use e8cu_pack): waits for `stream`, codes every item's streams on the device
 * (layout, decorrelation, coding 3), copies the frames back in one transfer, back to back in
 * item order (frame i at h_out + offsets[i], sizes[i] bytes: a chunk payload, FORMAT §7), and
 * writes their headers and CRC32Cs on the worker threads. h_out: out_cap bytes, pinned
 * (cudaMallocHost) for full speed. *total = the bytes the frames need, also when they do not
 * fit (E8C_ERR_DST_SIZE; call again with a larger h_out after a new quantize). offsets may be
 * NULL. Errors as e8cu_pack. The context keeps a device workspace for this stage, about
 * 2.5 bytes per quantized element of the largest batch seen (freed with the context). */
int64_t e8cu_pack_frames(e8cu_ctx *ctx, size_t n, const e8cu_item *items, const e8cu_qmeta *meta,
                         const void *d_q, size_t qbatch_bytes, void *h_out, size_t out_cap,
                         uint64_t *offsets, size_t *sizes, size_t *total, cudaStream_t stream);

/* ------------------------------------------------------------------ decode */

/* Host half of decoding: checks frames[i] (frame_sizes[i] bytes: header and stream CRCs,
 * fingerprint id) and unpacks it on the worker threads into the pinned h_q, filling meta[i].
 * items[i].p gives the expected layer, kind and n_tokens (a frame that differs:
 * E8C_ERR_SHAPE); the stored positions come from the frame. 0 or the lowest failing item's
 * error (E8C_ERR_TRUNCATED / _MAGIC / _VERSION / _CHECKSUM / _CORRUPT / _FINGERPRINT /
 * _SHAPE / _DST_SIZE). */
int64_t e8cu_unpack(e8cu_ctx *ctx, size_t n, const e8cu_item *items, const void *const *frames,
                    const size_t *frame_sizes, e8cu_qmeta *meta, void *h_q, size_t qbatch_bytes);

/* Dequantization stage: reads d_q (from e8cu_quantize_async, or h_q of e8cu_unpack copied to
 * the device) after wait_event (if not NULL), writes every item's device tensor (t.dtype;
 * numeric conversion as e8c_frame_decode). dp may be NULL (restore at the stored positions)
 * or ask for new positions, as in e8c_frame_decode (the same for every item). 0 or an error,
 * nothing enqueued then. */
int64_t e8cu_dequantize_async(e8cu_ctx *ctx, size_t n, const e8cu_item *items,
                              const e8cu_qmeta *meta, const e8c_decode_params *dp,
                              const void *d_q, size_t qbatch_bytes, cudaEvent_t wait_event,
                              cudaStream_t stream);

/* Whole decode. Frames whose streams are stored or coding 3 (every frame of an entropy =
 * rans32 encoder): header and CRC checks on the worker threads (as e8c_frame_decode makes
 * them), the frames' stream bytes staged in h_q and copied to the device in one transfer,
 * rans32 decoding and the layout undone on the GPU into d_q (waits for these kernels: a
 * damaged stream is reported here, E8C_ERR_CORRUPT, as the CPU decoder reports it), then
 * e8cu_dequantize_async. Other frames (zstd, coding 2): e8cu_unpack into h_q, one copy h_q ->
 * d_q, e8cu_dequantize_async. Returns once the dequantize work is enqueued; h_q and d_q stay
 * in use until the stream has passed it. 0 or an error of either half (host checks of all
 * frames come before the device's). */
int64_t e8cu_decode_async(e8cu_ctx *ctx, size_t n, const e8cu_item *items,
                          const void *const *frames, const size_t *frame_sizes,
                          const e8c_decode_params *dp, e8cu_qmeta *meta, void *h_q, void *d_q,
                          size_t qbatch_bytes, cudaEvent_t wait_event, cudaStream_t stream);

#ifdef __cplusplus
}
#endif
#endif /* E8CODEC_CUDA_H */
