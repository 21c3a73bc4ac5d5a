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
} e8cu_table;

struct e8cu_ctx {
    e8c_fingerprint fp;
    char err[320];
    e8c_ctx **workers;   /* one CPU codec context per worker thread (pack/unpack) */
    unsigned n_workers;
    float *d_signs;      /* [2][head_dim] */
    uint8_t bh_log2[E8C_MAX_HEAD_DIM / 8];
    float bh_gain[8];
    e8cu_table tab[E8CU_TABLES];
    uint64_t tick;
    float *h_cos, *h_sin;/* host staging for table builds */
    size_t h_cells;
};

int64_t e8cu_fail(e8cu_ctx *ctx, int64_t code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
int64_t e8cu_cuda_fail(e8cu_ctx *ctx, int e, const char *what);

/* A device table covering positions [first, first+rows) at rope_seq_len L (built if needed). */
int64_t e8cu_table_get(e8cu_ctx *ctx, uint32_t first, uint32_t rows, uint32_t L, e8cu_table **out);
/* Marks t as read by the work just enqueued on stream. */
int64_t e8cu_table_used(e8cu_ctx *ctx, e8cu_table *t, cudaStream_t stream);

/* Runs fn(arg, i, worker_ctx, msg) for i in [0, n) on the worker threads. Returns 0 or the
 * lowest failing i's code, with its message in ctx->err (msg if fn wrote one, else the worker
 * context's last error). */
typedef int64_t (*e8cu_job_fn)(void *arg, size_t i, e8c_ctx *wctx, char *msg, size_t msg_size);
int64_t e8cu_run_jobs(e8cu_ctx *ctx, size_t n, e8cu_job_fn fn, void *arg, const char *what);

#endif
