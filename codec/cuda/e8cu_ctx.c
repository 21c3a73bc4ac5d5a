/*
 * e8cu_ctx.c: the CUDA codec's context: fingerprint, host worker contexts, device tables
 * (Hadamard signs; RoPE cos/sin caches), errors, and the worker-thread helper.
 *
 * RoPE tables come from e8c_rope_cos_sin (FORMAT.md §2.2, computed on the host exactly as the
 * CPU path does) and are cached on the device per (first position, rows, rope_seq_len key).
 * Before a cache slot is overwritten, the event recorded after its last use is waited for, so
 * a table is never changed under a kernel still reading it. A table is uploaded with
 * cudaMemcpyAsync on the stream of the launch that reads it (a plain cudaMemcpy from pageable
 * memory returns before its DMA is done and orders nothing with a non-blocking stream: kernels
 * read half-written tables now and then; H200, 2026-11-29), and a later launch on another
 * stream waits for the upload's event.
 */
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "codec/cuda/e8cu_ctx.h"

const char *e8cu_error_name(int64_t r)
{
    return r == E8CU_ERR_CUDA ? "E8CU_ERR_CUDA" : e8c_error_name(r);
}

int64_t e8cu_fail(e8cu_ctx *ctx, int64_t code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(ctx->err, sizeof ctx->err, fmt, ap);
    va_end(ap);
    return code;
}

int64_t e8cu_cuda_fail(e8cu_ctx *ctx, int e, const char *what)
{
    return e8cu_fail(ctx, E8CU_ERR_CUDA, "%s: %s (%s)", what, cudaGetErrorName((cudaError_t)e),
                     cudaGetErrorString((cudaError_t)e));
}

const char *e8cu_ctx_last_error(const e8cu_ctx *ctx) { return ctx ? ctx->err : ""; }

static void free_tables(e8cu_ctx *ctx)
{
    for (int i = 0; i < E8CU_TABLES; i++) {
        e8cu_table *t = &ctx->tab[i];
        if (t->has_event) cudaEventSynchronize(t->used);
        if (t->used) cudaEventDestroy(t->used);
        if (t->ready) cudaEventDestroy(t->ready);
        cudaFree(t->d_cos);
        cudaFree(t->d_sin);
    }
}

void e8cu_ctx_free(e8cu_ctx *ctx)
{
    if (!ctx) return;
    free_tables(ctx);
    e8cu_entropy_free(ctx);
    cudaFree(ctx->d_signs);
    for (unsigned i = 0; i < ctx->n_workers; i++) e8c_ctx_free(ctx->workers[i]);
    free(ctx->workers);
    free(ctx->h_cos);
    free(ctx->h_sin);
    free(ctx);
}

static int64_t init_device(e8cu_ctx *ctx)
{
    const e8c_fingerprint *fp = &ctx->fp;
    uint32_t n = fp->head_dim;
    float signs[2 * E8C_MAX_HEAD_DIM];
    e8c_hadamard_signs(fp->config.hadamard_seed, n, 0, signs);
    e8c_hadamard_signs(fp->config.hadamard_seed, n, 1, signs + n);
    for (uint32_t r = 0; r < 2; r++)
        for (uint32_t k = 0; k < n; k++)
            if (signs[r * n + k] < 0.0f) ctx->sgn_bits[r][k / 8] |= (uint8_t)(1u << (k % 8));
    int e = cudaMalloc((void **)&ctx->d_signs, sizeof(float) * 2 * n);
    /* on the legacy stream, waited for: a cudaMemcpy from pageable memory may return before
     * its DMA is done, and the caller's (non-blocking) streams do not wait for that stream */
    if (e == cudaSuccess)
        e = cudaMemcpyAsync(ctx->d_signs, signs, sizeof(float) * 2 * n, cudaMemcpyHostToDevice, cudaStreamLegacy);
    if (e == cudaSuccess) e = cudaStreamSynchronize(cudaStreamLegacy);
    for (int i = 0; e == cudaSuccess && i < E8CU_TABLES; i++) {
        e = cudaEventCreateWithFlags(&ctx->tab[i].used, cudaEventDisableTiming);
        if (e == cudaSuccess) e = cudaEventCreateWithFlags(&ctx->tab[i].ready, cudaEventDisableTiming);
    }
    return e == cudaSuccess ? 0 : e8cu_cuda_fail(ctx, e, "context device tables");
}

/* The GPU codes frames itself (FORMAT v2 rans32: the same bytes on CPU and GPU) unless
 * E8CU_GPU_ENTROPY=0 is set (then the host packer: e8c_qlayer_pack on the worker threads, the
 * CPU path's own code). It was opt-in while test_many_items gave one wrong item per H200 run:
 * that was the RoPE table upload racing the kernels (e8cu_table_get), fixed in a80006c.
 * Configs other than rans32 always use the host packer. */
static int e8cu_entropy_on_gpu(const e8c_fingerprint *fp)
{
    const char *v = getenv("E8CU_GPU_ENTROPY");
    if (v && *v == '0') return 0;
    return fp->config.entropy == E8C_ENTROPY_RANS32;
}

/* Hadamard block structure (FORMAT §3): the binary expansion of n, largest block first. */
static void init_blocks(e8cu_ctx *ctx)
{
    uint32_t n = ctx->fp.head_dim, off = 0;
    for (int b = 9; b >= 3; b--) {
        uint32_t m = 1u << b;
        if (!(n & m)) continue;
        for (uint32_t k = off / 8; k < (off + m) / 8; k++) ctx->bh_log2[k] = (uint8_t)(b - 3);
        off += m;
    }
    for (int k = 0; k < 8; k++) ctx->bh_gain[k] = (float)(1.0 / sqrt((double)(8u << k)));
}

e8cu_ctx *e8cu_ctx_create(const e8c_fingerprint *fp, unsigned n_threads, int64_t *err)
{
    int64_t e = fp ? e8c_fingerprint_validate(fp, NULL, 0) : E8C_ERR_ARG;
    e8cu_ctx *ctx = NULL;
    if (e == 0 && !(ctx = calloc(1, sizeof *ctx))) e = E8C_ERR_NOMEM;
    if (e == 0) {
        ctx->fp = *fp;
        if (n_threads == 0) {
            long c = sysconf(_SC_NPROCESSORS_ONLN);
            n_threads = c > 0 ? (unsigned)c : 1;
        }
        if (n_threads > E8CU_MAX_WORKERS) n_threads = E8CU_MAX_WORKERS;
        ctx->workers = calloc(n_threads, sizeof *ctx->workers);
        if (!ctx->workers) e = E8C_ERR_NOMEM;
    }
    for (unsigned i = 0; e == 0 && ctx && i < n_threads; i++) {
        ctx->workers[i] = e8c_ctx_create(fp, &e);
        if (ctx->workers[i]) ctx->n_workers++;
    }
    if (e == 0) {
        init_blocks(ctx);
        e = e8c_fingerprint_id(fp, ctx->id);
        ctx->gpu_entropy = e8cu_entropy_on_gpu(fp);
    }
    if (e == 0) {
        e = init_device(ctx);
    }
    if (e && ctx) {
        e8cu_ctx_free(ctx);
        ctx = NULL;
    }
    if (err) *err = e;
    return ctx;
}

/* The rope_seq_len a table depends on: only dynamic NTK and longrope read it. */
static uint32_t table_key(const e8c_fingerprint *fp, uint32_t L)
{
    return (fp->rope.type == E8C_ROPE_DYNAMIC || fp->rope.type == E8C_ROPE_LONGROPE) ? L : 0;
}

int e8cu_table_covers(const e8cu_ctx *ctx, const e8cu_table *t, uint32_t first, uint32_t rows, uint32_t L)
{
    return t->valid && t->key == table_key(&ctx->fp, L) && t->first <= first &&
           (uint64_t)first + rows <= (uint64_t)t->first + t->rows;
}

int64_t e8cu_table_get(e8cu_ctx *ctx, uint32_t first, uint32_t rows, uint32_t L, cudaStream_t stream,
                       e8cu_table **out)
{
    uint32_t hr = ctx->fp.rope.rotary_dim / 2;
    ctx->tick++;
    for (int i = 0; i < E8CU_TABLES; i++) {
        e8cu_table *t = &ctx->tab[i];
        if (e8cu_table_covers(ctx, t, first, rows, L)) {
            int e = cudaStreamWaitEvent(stream, t->ready, 0);
            if (e != cudaSuccess) return e8cu_cuda_fail(ctx, e, "waiting for a RoPE table's upload");
            t->last = ctx->tick;
            *out = t;
            return 0;
        }
    }
    e8cu_table *t = &ctx->tab[0];
    for (int i = 1; i < E8CU_TABLES; i++)
        if (!ctx->tab[i].valid || (t->valid && ctx->tab[i].last < t->last)) t = &ctx->tab[i];
    int e = t->has_event ? cudaEventSynchronize(t->used) : cudaSuccess;
    if (e != cudaSuccess) return e8cu_cuda_fail(ctx, e, "waiting for a RoPE table's last use");
    t->valid = 0;
    size_t cells = (size_t)rows * hr;
    if (cells > ctx->h_cells) {
        float *c = realloc(ctx->h_cos, cells * sizeof(float)), *s = c ? realloc(ctx->h_sin, cells * sizeof(float)) : NULL;
        if (c) ctx->h_cos = c;
        if (s) ctx->h_sin = s;
        if (!c || !s) return e8cu_fail(ctx, E8C_ERR_NOMEM, "host RoPE table of %zu entries", cells);
        ctx->h_cells = cells;
    }
    int64_t rc = e8c_rope_cos_sin(&ctx->fp, L, first, rows, ctx->h_cos, ctx->h_sin);
    if (rc) return e8cu_fail(ctx, rc, "RoPE table for positions %u+%u, rope_seq_len %u", first, rows, L);
    if (cells > t->cells) {
        cudaFree(t->d_cos);
        cudaFree(t->d_sin);
        t->d_cos = t->d_sin = NULL;
        t->cells = 0;
        e = cudaMalloc((void **)&t->d_cos, cells * sizeof(float));
        if (e == cudaSuccess) e = cudaMalloc((void **)&t->d_sin, cells * sizeof(float));
        if (e != cudaSuccess) return e8cu_cuda_fail(ctx, e, "device RoPE table");
        t->cells = cells;
    }
    /* from pageable memory: h_cos/h_sin are staged before the calls return (free to reuse) */
    e = cudaMemcpyAsync(t->d_cos, ctx->h_cos, cells * sizeof(float), cudaMemcpyHostToDevice, stream);
    if (e == cudaSuccess)
        e = cudaMemcpyAsync(t->d_sin, ctx->h_sin, cells * sizeof(float), cudaMemcpyHostToDevice, stream);
    if (e == cudaSuccess) e = cudaEventRecord(t->ready, stream);
    if (e != cudaSuccess) return e8cu_cuda_fail(ctx, e, "RoPE table upload");
    t->valid = 1;
    t->key = table_key(&ctx->fp, L);
    t->first = first;
    t->rows = rows;
    t->last = ctx->tick;
    *out = t;
    return 0;
}

int64_t e8cu_table_used(e8cu_ctx *ctx, e8cu_table *t, cudaStream_t stream)
{
    int e = cudaEventRecord(t->used, stream);
    if (e != cudaSuccess) return e8cu_cuda_fail(ctx, e, "recording a RoPE table's use");
    t->has_event = 1;
    return 0;
}

int64_t e8cu_ctx_reserve_positions(e8cu_ctx *ctx, uint32_t first_pos, uint32_t n_positions,
                                   uint32_t rope_seq_len)
{
    if (!ctx) return E8C_ERR_ARG;
    ctx->err[0] = 0;
    if (ctx->fp.rope.type == E8C_ROPE_NONE || n_positions == 0) return 0;
    if ((uint64_t)first_pos + n_positions > E8C_MAX_POSITION)
        return e8cu_fail(ctx, E8C_ERR_POSITION, "positions %u+%u exceed %u", first_pos, n_positions, E8C_MAX_POSITION);
    e8cu_table *t;
    int64_t rc = e8cu_table_get(ctx, first_pos, n_positions, rope_seq_len ? rope_seq_len : first_pos + n_positions,
                                cudaStreamLegacy, &t);
    int e = rc ? cudaSuccess : cudaStreamSynchronize(cudaStreamLegacy);
    return rc ? rc : e ? e8cu_cuda_fail(ctx, e, "RoPE table upload") : 0;
}

/* ------------------------------------------------------------ workers */

typedef struct {
    e8cu_ctx *ctx;
    size_t n;
    e8cu_job_fn fn;
    void *arg;
    size_t next;       /* next job index (under mu) */
    size_t fail_index; /* lowest failing job */
    int64_t fail_code;
    char fail_msg[256];
    pthread_mutex_t mu;
} e8cu_pool;

typedef struct { e8cu_pool *pool; unsigned w; } e8cu_worker_arg;

static void *worker_main(void *p)
{
    e8cu_worker_arg *wa = p;
    e8cu_pool *pool = wa->pool;
    e8c_ctx *wctx = pool->ctx->workers[wa->w];
    for (;;) {
        pthread_mutex_lock(&pool->mu);
        size_t i = pool->next++;
        pthread_mutex_unlock(&pool->mu);
        if (i >= pool->n) break;
        char msg[192] = "";
        int64_t rc = pool->fn(pool->arg, i, wctx, msg, sizeof msg);
        if (rc < 0) {
            pthread_mutex_lock(&pool->mu);
            if (i < pool->fail_index) {
                pool->fail_index = i;
                pool->fail_code = rc;
                snprintf(pool->fail_msg, sizeof pool->fail_msg, "%s", msg[0] ? msg : e8c_ctx_last_error(wctx));
            }
            pthread_mutex_unlock(&pool->mu);
        }
    }
    return NULL;
}

int64_t e8cu_run_jobs(e8cu_ctx *ctx, size_t n, e8cu_job_fn fn, void *arg, const char *what)
{
    e8cu_pool pool = {.ctx = ctx, .n = n, .fn = fn, .arg = arg, .fail_index = (size_t)-1};
    pthread_mutex_init(&pool.mu, NULL);
    unsigned nt = ctx->n_workers < n ? ctx->n_workers : (unsigned)n;
    pthread_t th[E8CU_MAX_WORKERS];
    e8cu_worker_arg wa[E8CU_MAX_WORKERS];
    unsigned started = 0;
    for (unsigned w = 1; w < nt; w++) {
        wa[w] = (e8cu_worker_arg){&pool, w};
        if (pthread_create(&th[w], NULL, worker_main, &wa[w]) != 0) break;
        started = w;
    }
    wa[0] = (e8cu_worker_arg){&pool, 0};
    worker_main(&wa[0]);
    for (unsigned w = 1; w <= started; w++) pthread_join(th[w], NULL);
    pthread_mutex_destroy(&pool.mu);
    if (pool.fail_code)
        return e8cu_fail(ctx, pool.fail_code, "%s: item %zu: %s: %s", what, pool.fail_index,
                         e8c_error_name(pool.fail_code), pool.fail_msg);
    return 0;
}
