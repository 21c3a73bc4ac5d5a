/* e8cu_ctx.h: the CUDA codec context's internals, shared by e8cu_ctx.c and e8cu_batch.c
 * (host code only; not installed). */
#ifndef E8CU_CTX_H
#define E8CU_CTX_H

#include "codec/cuda/e8codec_cuda.h"
#include "codec/cuda/e8cu_internal.h"

#define E8CU_MAX_WORKERS 64
#define E8CU_TABLES 4

/* One device RoPE cos/sin table: positions [first, first + rows) for rope_seq_len key. */
typedef struct e8cu_table {
    int valid;
    uint32_t key, first, rows;
    uint64_t last;       /* ctx tick of last use (LRU) */
    size_t cells;        /* capacity in floats, each array */
    float *d_cos, *d_sin;
    cudaEvent_t used;    /* recorded after each launch reading the table */
    int has_event;
    cudaEvent_t ready;   /* recorded on the upload's stream right after the upload */
} e8cu_table;

/* Where item i's arrays sit in a qbatch (bytes from its start), for the actual policy. */
typedef struct e8cu_off { size_t scales, points2, raw, end; uint32_t n_q, n_raw; } e8cu_off;

#define E8CU_MAX_GROUPS 8
/* Events of the group pipeline: one for the setup, then one per group for its kernels (and its
 * records download) and one per group for its frames copy. Never shared between groups, so that
 * a wait always means the group it names (no re-recording while a wait or a host read is pending). */
#define E8CU_EV_SETUP 0
#define E8CU_EV_KERN(g) (1 + (g))
#define E8CU_EV_COPY(g) (1 + E8CU_MAX_GROUPS + (g))
#define E8CU_PIPE_EVENTS (1 + 2 * E8CU_MAX_GROUPS)

/* Device and host workspace of the GPU entropy stage (e8cu_entropy.c), grown on demand. */
typedef struct e8cu_ews {
    void *d_fr, *d_hd, *d_M, *d_hist, *d_ws, *d_cw, *d_out, *d_total;
    size_t c_fr, c_hd, c_M, c_hist, c_ws, c_cw, c_out, c_total;
    void *h_fr, *h_hd;   /* host copies (pinned) of the frame and head records; encode: what the
                          * kernels wrote (downloaded per group); decode: what is uploaded */
    size_t hc_fr, hc_hd;
    void *h_up;          /* encode: the frame records as uploaded (pinned; never a download target) */
    size_t hc_up;
    cudaStream_t copy;   /* frames between host and device while groups are coded */
    cudaStream_t aux;    /* a second kernel stream: two groups are coded at once */
    cudaEvent_t ev[E8CU_PIPE_EVENTS]; /* E8CU_EV_SETUP, E8CU_EV_KERN(g), E8CU_EV_COPY(g) */
} e8cu_ews;

struct e8cu_ctx {
    e8c_fingerprint fp;
    char err[320];
    e8c_ctx **workers;   /* one CPU codec context per worker thread (pack/unpack) */
    unsigned n_workers;
    float *d_signs;      /* [2][head_dim] */
    uint8_t bh_log2[E8C_MAX_HEAD_DIM / 8];
    float bh_gain[8];
    uint8_t sgn_bits[2][E8C_MAX_HEAD_DIM / 8]; /* the signs as bits (e8cu_launch.sgn_bits) */
    e8cu_table tab[E8CU_TABLES];
    uint64_t tick;
    float *h_cos, *h_sin;/* host staging for table builds */
    size_t h_cells;
    uint8_t id[E8C_ID_SIZE]; /* fingerprint id (frame headers carry its first 8 bytes) */
    int gpu_entropy;     /* 1: e8cu_pack codes on the GPU (entropy = rans32) */
    e8cu_ews ews;
};

/* GPU entropy stage (e8cu_entropy.c). */
void e8cu_entropy_free(e8cu_ctx *ctx);
uint32_t e8cu_crc32c(const void *p, size_t n);
/* Workspace growth: device (cudaMalloc, a little more than need) and host (realloc). */
int64_t e8cu_grow_dev(e8cu_ctx *ctx, void **p, size_t *cap, size_t need, const char *what);
int64_t e8cu_grow_host(e8cu_ctx *ctx, void **p, size_t *cap, size_t need);
int64_t e8cu_grow_pinned(e8cu_ctx *ctx, void **p, size_t *cap, size_t need); /* cudaMallocHost */
/* Decode on the GPU (e8cu_dentropy.c): checks the frames, stages them in h_q, copies them to the
 * device and decodes them into d_q, filling meta; waits for the decode kernels. 0, an error, or
 * 1: this batch needs the host path (a coding other than 0 and 3, or h_q too small). */
int64_t e8cu_gpu_decode(e8cu_ctx *ctx, size_t n, const e8cu_item *items, const void *const *frames,
                        const size_t *frame_sizes, e8cu_qmeta *meta, void *h_q, void *d_q, size_t qbatch_bytes,
                        cudaStream_t stream);
/* Codes the quantized items of d_q on the GPU (after the work on stream): frames back to back
 * into h_out (h_cap bytes, pinned), their headers and CRCs written on the worker threads;
 * sizes[i] (and offsets[i], if not NULL) set; with dsts, frame i is also copied to dsts[i]
 * (caps[i] bytes, else E8C_ERR_DST_SIZE). *total = the bytes the frames need. 0; 1 when they do
 * not fit h_cap (h_out then holds nothing valid); or an error. */
int64_t e8cu_gpu_pack(e8cu_ctx *ctx, size_t n, const e8cu_item *items, const e8cu_qmeta *meta, const e8cu_off *off,
                      const void *d_q, void *h_out, size_t h_cap, void *const *dsts, const size_t *caps, size_t *sizes,
                      uint64_t *offsets, uint64_t *total, cudaStream_t stream);
/* Streams and events of the group pipeline (created once); the kernel stream of group g. */
int64_t e8cu_pipe_init(e8cu_ctx *ctx);
cudaStream_t e8cu_group_stream(const e8cu_ctx *ctx, size_t g, cudaStream_t stream);
/* Writes frame i's header and CRCs in place in h_out (after e8cu_gpu_pack's copy); thread-safe. */
void e8cu_gpu_header(const e8cu_ctx *ctx, size_t i, const e8cu_item *it, const e8cu_qmeta *m, uint8_t *h_out);

/* Fills off[0..n) and returns the qbatch bytes used (e8cu_batch.c). */
size_t e8cu_layout(const e8cu_ctx *ctx, size_t n, const e8cu_item *items, const e8cu_qmeta *meta, e8cu_off *off);
/* The same for items [i0, i1) only, continuing from byte offset cur (the first item's start:
 * A16(8 n) for i0 = 0, else the previous item's end). Returns the end. */
size_t e8cu_layout_range(const e8cu_ctx *ctx, size_t i0, size_t i1, size_t cur, const e8cu_item *items,
                         const e8cu_qmeta *meta, e8cu_off *off);

int64_t e8cu_fail(e8cu_ctx *ctx, int64_t code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
int64_t e8cu_cuda_fail(e8cu_ctx *ctx, int e, const char *what);

/* A device table covering positions [first, first+rows) at rope_seq_len L (built if needed),
 * ready for work enqueued on stream after this call: a new table is uploaded on stream itself,
 * and stream waits for the upload of a cached one (which another stream may have made). */
int64_t e8cu_table_get(e8cu_ctx *ctx, uint32_t first, uint32_t rows, uint32_t L, cudaStream_t stream,
                       e8cu_table **out);
/* 1 when t (valid) holds the rows of positions first .. first+rows-1 for rope_seq_len L, the
 * check e8cu_table_get starts with; 0 otherwise. */
int e8cu_table_covers(const e8cu_ctx *ctx, const e8cu_table *t, uint32_t first, uint32_t rows, uint32_t L);
/* Marks t as read by the work just enqueued on stream. */
int64_t e8cu_table_used(e8cu_ctx *ctx, e8cu_table *t, cudaStream_t stream);

/* Runs fn(arg, i, worker_ctx, msg) for i in [0, n) on the worker threads. Returns 0 or the
 * lowest failing i's code, with its message in ctx->err (msg if fn wrote one, else the worker
 * context's last error). */
typedef int64_t (*e8cu_job_fn)(void *arg, size_t i, e8c_ctx *wctx, char *msg, size_t msg_size);
int64_t e8cu_run_jobs(e8cu_ctx *ctx, size_t n, e8cu_job_fn fn, void *arg, const char *what);

#endif
