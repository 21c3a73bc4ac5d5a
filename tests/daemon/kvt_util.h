/* kvt_util.h: helpers of the daemon's end-to-end tests and benchmark: start and stop a real
 * e8kvd on a temporary data directory (unix socket under the temp dir, so parallel runs never
 * clash), make synthetic KV chunks and fingerprints, and run PutChunks / GetChunks calls. */
#ifndef KVT_UTIL_H
#define KVT_UTIL_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "codec/e8codec.h"
#include "e8kv/v1/kvstore.pb-c.h"
#include "tests/daemon/kvt_client.h"

#define KVT_SVC "/e8kv.v1.KVStore/"

typedef struct kvt_daemon {
  pid_t pid;
  char dir[256];          /* temp dir: data/, sock, log */
  char data[300];
  char target[300];       /* "unix:<dir>/kvd.sock" */
  char log[300];
  int tcp_port;           /* bound TCP port when a TCP address was asked (else 0) */
  int metrics_port;
} kvt_daemon;

/* Makes a fresh temp dir (under $TMPDIR or /tmp). */
int kvt_daemon_init(kvt_daemon *d);
/* Starts build/.../e8kvd (path from $E8KVD or argv-derived default) with --data-dir,
 * --listen unix:<dir>/kvd.sock[,127.0.0.1:0 if tcp], --metrics-listen 127.0.0.1:0 and the
 * extra flags (NULL-terminated). Waits for its "event=ready" line. 0 or -1. */
int kvt_daemon_start(kvt_daemon *d, int tcp, const char *const *extra);
/* SIGTERM and wait: returns the exit status (0 = clean), -1 after 60 s (then SIGKILL). */
int kvt_daemon_stop(kvt_daemon *d);
/* SIGKILL and wait. */
void kvt_daemon_kill9(kvt_daemon *d);
/* CLOCK_MONOTONIC in seconds (for bounds that only stop a hang; never wall time). */
double kvt_now_s(void);
/* Removes the temp dir. */
void kvt_daemon_cleanup(kvt_daemon *d);
/* Path of the e8kvd binary: $E8KVD, else <dir of this test binary>/../../bin/e8kvd. */
void kvt_set_binary_from_argv0(const char *argv0);

/* A small Llama-like fingerprint: n_layers x n_kv_heads x head_dim, fp16, RoPE theta 1e5
 * split-half, codec defaults. Fills both the wire message (with its storage in f) and the
 * codec struct. */
typedef struct kvt_fp {
  E8kv__V1__ModelFingerprint pb;
  E8kv__V1__RopeConfig rope;
  E8kv__V1__CodecConfig codec;
  e8c_fingerprint fp;
  char model[64];
} kvt_fp;
void kvt_fp_make(kvt_fp *f, const char *model, uint32_t layers, uint32_t heads, uint32_t dim);

/* Synthetic raw fp16 KV of one chunk [L][2][H][T][D] (deterministic from seed); malloc'ed. */
uint16_t *kvt_kv_make(const kvt_fp *f, uint32_t n_tokens, uint32_t seed, size_t *bytes);
/* Encodes raw fp16 locally with the codec at first_pos; malloc'ed frame, *len its size. */
uint8_t *kvt_encode(const kvt_fp *f, const uint16_t *raw, uint32_t n_tokens,
                    uint32_t first_pos, size_t *len);
/* Token ids t0..t0+n-1 mapped through a seed. */
void kvt_tokens(uint32_t *out, size_t n, uint32_t seed, size_t t0);

/* One chunk to put. */
typedef struct kvt_chunk {
  const uint32_t *tokens;
  uint32_t n_tokens;
  const uint8_t *data;
  size_t len;
} kvt_chunk;

/* PutChunks: header + chunks, each split in pieces of at most piece bytes (0 = whole). */
int kvt_put(kvt_conn *c, const E8kv__V1__PutHeader *h, const kvt_chunk *chunks, size_t n,
            size_t piece, E8kv__V1__PutChunksResponse **resp, kvt_status *st);

/* GetChunks: reassembles chunks; out[i] malloc'ed data, len[i], first_pos/tokens of each.
 * Returns the status code; *n_out chunks completed. */
typedef struct kvt_got {
  uint8_t *data;
  size_t len;
  uint64_t start_token;
  uint32_t n_tokens;
  uint32_t *token_ids;
  uint8_t key[32];
  int encoding;           /* E8kv__V1__Encoding of the answer */
} kvt_got;
/* GetChunks, every piece read and assembled; timeout_ms: at least 60 s (kvt_hang_ms). */
int kvt_get(kvt_conn *c, const E8kv__V1__GetChunksRequest *rq, kvt_got *out, size_t max,
            size_t *n_out, kvt_status *st, int timeout_ms);
void kvt_got_free(kvt_got *g, size_t n);

/* GetStats of c's namespace (a 60 s deadline: kvt_hang_ms). *resp: the answer (free with
 * e8kv__v1__get_stats_response__free_unpacked), NULL on error. Returns the status code. */
int kvt_stats(kvt_conn *c, E8kv__V1__GetStatsResponse **resp, kvt_status *st);

/* HTTP GET of the metrics page on 127.0.0.1:port; malloc'ed body or NULL. */
char *kvt_http_get(int port, const char *path);

/* fp16 bits <-> float. */
float kvt_h2f(uint16_t h);
uint16_t kvt_f2h(float f);

#endif
