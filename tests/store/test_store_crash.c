/* test_store_crash.c: crash safety by SIGKILL. A child process opens the store and writes
 * batches of chunks (and now and then deletes some of its own and compacts), reporting over a
 * pipe every chunk whose put returned success ("acknowledged") and every chunk it is about to
 * delete. The parent kills it after a random 0..80 ms (during open/recovery, a write, an
 * fdatasync, an LMDB commit, a compaction...; every 4th kill counts from the child's first
 * acknowledgement, see read_first), reopens the store and checks:
 *   - every acknowledged chunk not announced for deletion reads back byte-identical;
 *   - every chunk the index shows (acknowledged or not) reads back byte-identical, and a full
 *     verify finds no CRC failure: nothing unacknowledged is visible as corrupt and the index
 *     never points past written data.
 * E8S_CRASH_KILLS (default 110) kills per io engine, so >= 200 per run. A second test does the
 * same with 4 writer threads in the child (E8S_CRASH_KILLS_MT, default 40 per engine): their
 * puts share groups and go through the write pipeline's stages at the same time (group
 * commit; a batch whose writes completed before another batch's fdatasync of the same segment
 * began skips its own: store_wpipe.c), and every put any of them saw acknowledged must
 * survive the kill. A third kills a
 * child changing a session with e8s_session_write (APPEND with metadata, CUT) and checks the
 * session is always one whole change: metadata, chain and pins agree (E8S_CRASH_KILLS_SESS,
 * default 30 per engine). */
#include <errno.h>
#include <pthread.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "store/e8store_test.h"
#include "tests/store/store_test_util.h"

#define CT 16
#define PER_RUN 1000          /* chunk index space per child run */
#define DEL_FLAG 0x80000000u

static size_t pbytes(uint32_t i) { return 100 + (i * 2654435761u) % 30000; }

static void key_of(tu_env *env, uint32_t i, uint32_t tok[CT], uint8_t key[32]) {
  tu_tokens(tok, CT, i);
  e8s_chunk_key(env->salt, env->fp, NULL, tok, CT, key);
}

typedef struct child_arg {
  tu_env *env;
  e8s_store *st;
  uint32_t first, end; /* this writer's chunk indexes */
  int wfd, maint;      /* maint: this writer also deletes and compacts */
  unsigned seed;
} child_arg;

static void *child_writer(void *vp) {
  child_arg *a = vp;
  tu_env *env = a->env;
  uint32_t next = a->first, acked[PER_RUN];
  size_t n_acked = 0;
  for (int batch = 0; next + 8 < a->end; batch++) {
    int n = 1 + (int)(rand_r(&a->seed) % 6);
    e8s_put_rec r[8];
    uint32_t tok[8][CT], idx[8];
    uint8_t *pl[8];
    memset(r, 0, sizeof r);
    for (int j = 0; j < n; j++) {
      idx[j] = next++;
      key_of(env, idx[j], tok[j], r[j].key);
      r[j].tokens = tok[j];
      r[j].n_tokens = CT;
      pl[j] = malloc(pbytes(idx[j]));
      tu_payload(pl[j], pbytes(idx[j]), idx[j]);
      r[j].payload = pl[j];
      r[j].payload_bytes = pbytes(idx[j]);
    }
    e8s_put(a->st, env->ns, env->fp, r, (size_t)n);
    uint32_t msg[8];
    int m = 0;
    for (int j = 0; j < n; j++) {
      if (r[j].result == E8S_OK) msg[m++] = idx[j], acked[n_acked++] = idx[j];
      free(pl[j]);
    }
    /* at most 32 bytes: one atomic pipe write, whichever thread */
    if (m && write(a->wfd, msg, (size_t)m * 4) != (ssize_t)m * 4) _exit(4);
    if (a->maint && batch % 4 == 3 && n_acked > 4) { /* delete two of ours, announced first */
      for (int d = 0; d < 2; d++) {
        uint32_t v = acked[rand_r(&a->seed) % n_acked], note = v | DEL_FLAG;
        uint8_t key[32];
        uint32_t t[CT];
        if (write(a->wfd, &note, 4) != 4) _exit(4);
        key_of(env, v, t, key);
        e8s_chunk_delete(a->st, env->ns, key);
      }
    }
    if (a->maint && batch % 8 == 7) {
      e8s_compact_report rep;
      e8s_compact(a->st, 0.3, &rep, NULL, NULL);
    }
  }
  return NULL;
}

/* threads writers, each on its own slice of [base, base + PER_RUN). */
static void child(tu_env *env, uint32_t base, int wfd, unsigned seed, int threads) {
  e8s_store *st;
  if (e8s_open(&env->cfg, &st) != E8S_OK) _exit(3);
  child_arg a[4];
  pthread_t th[4];
  uint32_t per = PER_RUN / (uint32_t)threads;
  for (int t = 0; t < threads; t++) {
    a[t] = (child_arg){env, st, base + (uint32_t)t * per, base + (uint32_t)(t + 1) * per, wfd,
                       t == 0, seed + (unsigned)t * 7919u};
    if (pthread_create(&th[t], NULL, child_writer, &a[t]) != 0) _exit(5);
  }
  for (int t = 0; t < threads; t++) pthread_join(th[t], NULL);
  e8s_close(st);
  _exit(0);
}

/* status: 0 never acknowledged, 1 acknowledged, 2 announced for deletion, 3 seen in the index
 * without an acknowledgement (committed, then killed before the ack). Chunks of earlier runs
 * with status 0 were never seen, so cannot appear later: only [base, end) is scanned whole. */
static void check(tu_env *env, uint8_t *status, uint32_t base, uint32_t end) {
  uint32_t tok[CT];
  uint8_t key[32];
  uint8_t *buf = malloc(40000), *want = malloc(40000);
  e8s_stats s;
  assert_int_equal(e8s_stats_get(env->st, &s), 0);
  uint64_t visible = 0;
  for (uint32_t i = 0; i < end; i++) {
    if (i < base && status[i] == 0) continue;
    key_of(env, i, tok, key);
    uint64_t n = 0;
    int rc = e8s_get(env->st, env->ns, key, buf, 40000, &n);
    if (rc == E8S_ERR_NOTFOUND && status[i] != 1) continue;
    if (status[i] == 0) status[i] = 3;
    if (rc != E8S_OK) fprintf(stderr, "crash: chunk %u (status %d): %s %s\n", i, status[i],
                              e8s_error_name(rc), e8s_last_error_detail());
    assert_int_equal(rc, E8S_OK);
    tu_payload(want, pbytes(i), i);
    assert_int_equal(n, pbytes(i));
    assert_memory_equal(buf, want, n);
    visible++;
  }
  assert_int_equal(visible, s.chunks); /* the index holds nothing else */
  e8s_verify_report vr;
  assert_int_equal(e8s_verify(env->st, &vr, NULL, NULL), 0);
  assert_int_equal(vr.newly_quarantined, 0);
  assert_int_equal(vr.quarantined, 0);
  assert_int_equal(vr.chunks_checked, s.chunks);
  free(buf);
  free(want);
}

/* Reads exactly n bytes the child wrote to the pipe: waits for them (60 s only bounds a
 * hang); -1 if the child died or never wrote them. Every 4th kill first waits for the child's
 * first report: kills after a random 0..80 ms alone could all land before any put or session
 * change was done (a store open plus an fdatasync can take longer than that on a loaded
 * machine's disk), and the runs' "anything acknowledged" checks failed then. The other kills
 * keep the random point, during open/recovery included. */
static int read_first(int fd, void *buf, size_t n) {
  size_t got = 0;
  while (got < n) {
    struct pollfd p = {.fd = fd, .events = POLLIN};
    int pr = poll(&p, 1, 60000);
    if (pr < 0 && errno == EINTR) continue;
    if (pr <= 0) return -1;
    ssize_t r = read(fd, (char *)buf + got, n - got);
    if (r > 0) got += (size_t)r;
    else if (r == 0 || errno != EINTR) return -1;
  }
  return 0;
}

static void crash_kill(tu_env *env, int kills, int threads) {
  env->cfg.segment_bytes = 1 << 20;
  e8s_close(env->st); /* the parent holds no handle while a child writes */
  env->st = NULL;
  uint8_t *status = calloc((size_t)kills * PER_RUN, 1);
  unsigned seed = (unsigned)time(NULL) ^ (unsigned)getpid();
  fprintf(stderr, "crash: seed %u, %d kills, %d writer thread(s), engine %d\n", seed, kills,
          threads, (int)tu_engine);
  long total_acked = 0;
  for (int k = 0; k < kills; k++) {
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    uint32_t base = (uint32_t)k * PER_RUN;
    unsigned cseed = rand_r(&seed);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
      close(fds[0]);
      child(env, base, fds[1], cseed, threads);
    }
    close(fds[1]);
    if (k % 4 == 0) { /* after the first acknowledgement (read_first) */
      uint32_t first;
      assert_int_equal(read_first(fds[0], &first, 4), 0);
      assert_true(first >= base && first < base + PER_RUN && !(first & DEL_FLAG));
      status[first] = 1, total_acked++;
    }
    struct timespec ts = {0, (long)(rand_r(&seed) % 80000) * 1000L};
    nanosleep(&ts, NULL);
    kill(pid, SIGKILL);
    int wst;
    assert_int_equal(waitpid(pid, &wst, 0), pid);
    uint32_t msg[256];
    ssize_t got;
    while ((got = read(fds[0], msg, sizeof msg)) > 0 || (got < 0 && errno == EINTR))
      for (ssize_t j = 0; j < got / 4; j++) {
        uint32_t v = msg[j] & ~DEL_FLAG;
        assert_true(v >= base && v < base + PER_RUN);
        if (msg[j] & DEL_FLAG) status[v] = 2;
        else status[v] = 1, total_acked++;
      }
    close(fds[0]);
    assert_false(WIFEXITED(wst) && WEXITSTATUS(wst) != 0); /* the child never failed to open */
    tu_reopen(env);
    check(env, status, base, base + PER_RUN);
    e8s_close(env->st);
    env->st = NULL;
  }
  fprintf(stderr, "crash: %d kills, %ld chunks acknowledged in all, all checked after every kill\n", kills,
          total_acked);
  assert_true(total_acked > 0);
  tu_reopen(env);
  free(status);
}

static int env_int(const char *name, int def) {
  const char *v = getenv(name);
  return v ? atoi(v) : def;
}

/* ---------------------------------------------------------------- session changes
 * Chain A = a[0..8), chain B = a[0], b[0..3) (b continues a[0]). The child changes session "s"
 * forever with e8s_session_write: an A prefix of L < 8 grows by 1..3 (APPEND + metadata),
 * the full A is CUT to a[0] + b[0..3), B is CUT to a[0..3). Each change sets the metadata to
 * "<chain>:<n_chunks>" in the same call. After every kill: the metadata matches the chain
 * exactly, and every chunk is pinned once if in the chain, else not at all. A change made in
 * two transactions (replace then append, or metadata then append) fails this check when the
 * kill falls between them. */
#define SW_A 8
#define SW_B 3

static void sw_put(tu_env *env, const uint8_t *parent, uint32_t seed, size_t n,
                   uint8_t (*keys)[32]) {
  uint8_t prev[32] = {0}, pl[64];
  if (parent) memcpy(prev, parent, 32);
  for (size_t i = 0; i < n; i++) {
    uint32_t tok[CT];
    tu_tokens(tok, CT, seed + (uint32_t)i);
    tu_payload(pl, sizeof pl, seed + (uint32_t)i);
    e8s_put_rec r = {.tokens = tok, .n_tokens = CT, .payload = pl, .payload_bytes = sizeof pl};
    memcpy(r.parent, prev, 32);
    assert_int_equal(e8s_chunk_key(env->salt, env->fp, parent || i ? prev : NULL, tok, CT,
                                   r.key), 0);
    assert_int_equal(e8s_put(env->st, env->ns, env->fp, &r, 1), E8S_OK);
    memcpy(keys[i], r.key, 32);
    memcpy(prev, r.key, 32);
  }
}

typedef struct sw_chains { uint8_t a[SW_A][32], b[SW_B][32]; } sw_chains;

/* Reads session "s": *chain 'A' or 'B', *n chunks (metadata checked against the keys). */
static int sw_read(e8s_store *st, tu_env *env, const sw_chains *c, char *chain, uint64_t *n) {
  uint8_t keys[16][32];
  char meta[32] = {0};
  e8s_session_info si;
  if (e8s_session_get(st, env->ns, "s", &si, keys, 16, meta, sizeof meta - 1) != E8S_OK) return -1;
  char tag = 0;
  unsigned m = 0;
  if (sscanf(meta, "%c:%u", &tag, &m) != 2 || m != si.n_chunks || si.n_chunks == 0) return -2;
  for (uint64_t i = 0; i < si.n_chunks; i++) {
    const uint8_t *want = tag == 'A' || i == 0 ? (i < SW_A ? c->a[i] : NULL)
                                                : (i - 1 < SW_B ? c->b[i - 1] : NULL);
    if (!want || memcmp(keys[i], want, 32) != 0) return -3;
  }
  *chain = tag;
  *n = si.n_chunks;
  return 0;
}

static void sw_child(tu_env *env, const sw_chains *c, int wfd, unsigned seed) {
  e8s_store *st;
  if (e8s_open(&env->cfg, &st) != E8S_OK) _exit(3);
  for (;;) {
    char tag;
    uint64_t n;
    if (sw_read(st, env, c, &tag, &n)) _exit(5);
    char meta[32];
    e8s_session_change chg = {.fp_id = env->fp, .set_meta = 1, .meta = meta, .expect_chunks = n};
    if (tag == 'A' && n < SW_A) { /* APPEND */
      uint64_t j = 1 + rand_r(&seed) % 3;
      if (n + j > SW_A) j = SW_A - n;
      chg.keep_chunks = n;
      chg.keys = (const uint8_t(*)[32])c->a[n];
      chg.n_keys = j;
      snprintf(meta, sizeof meta, "A:%u", (unsigned)(n + j));
    } else if (tag == 'A') { /* CUT to B */
      chg.keep_chunks = 1;
      chg.keys = (const uint8_t(*)[32])c->b;
      chg.n_keys = SW_B;
      snprintf(meta, sizeof meta, "B:%u", 1 + SW_B);
    } else { /* CUT to A[0..3) */
      chg.keep_chunks = 1;
      chg.keys = (const uint8_t(*)[32])c->a[1];
      chg.n_keys = 2;
      snprintf(meta, sizeof meta, "A:3");
    }
    chg.meta_bytes = strlen(meta);
    if (e8s_session_write(st, env->ns, "s", &chg) != E8S_OK) _exit(6);
    if (write(wfd, "x", 1) != 1) _exit(4);
  }
}

static void sw_check(tu_env *env, const sw_chains *c) {
  char tag;
  uint64_t n;
  assert_int_equal(sw_read(env->st, env, c, &tag, &n), 0);
  for (int i = 0; i < SW_A + SW_B; i++) {
    const uint8_t *k = i < SW_A ? c->a[i] : c->b[i - SW_A];
    int in = i == 0 || (tag == 'A' ? i < (int)n : i >= SW_A);
    e8s_chunk_info ci;
    assert_int_equal(e8s_chunk_stat(env->st, env->ns, k, &ci), E8S_OK);
    assert_int_equal(ci.session_refs, in ? 1 : 0);
  }
}

static void test_crash_session_write(void **state) {
  tu_env *env = *state;
  sw_chains c;
  sw_put(env, NULL, 9000, SW_A, c.a);
  sw_put(env, c.a[0], 9100, SW_B, c.b);
  e8s_session_change first = {.create = 1, .fp_id = env->fp, .meta = "A:1", .meta_bytes = 3,
                              .keys = (const uint8_t(*)[32])c.a, .n_keys = 1};
  assert_int_equal(e8s_session_write(env->st, env->ns, "s", &first), E8S_OK);
  sw_check(env, &c);
  e8s_close(env->st);
  env->st = NULL;
  int kills = env_int("E8S_CRASH_KILLS_SESS", 30);
  unsigned seed = (unsigned)time(NULL) ^ (unsigned)getpid();
  long changes = 0;
  for (int k = 0; k < kills; k++) {
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    unsigned cseed = rand_r(&seed);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
      close(fds[0]);
      sw_child(env, &c, fds[1], cseed);
    }
    close(fds[1]);
    if (k % 4 == 0) { /* after the first change (read_first) */
      char first;
      assert_int_equal(read_first(fds[0], &first, 1), 0);
      changes++;
    }
    struct timespec ts = {0, (long)(rand_r(&seed) % 40000) * 1000L};
    nanosleep(&ts, NULL);
    kill(pid, SIGKILL);
    int wst;
    assert_int_equal(waitpid(pid, &wst, 0), pid);
    char buf[256];
    ssize_t got;
    while ((got = read(fds[0], buf, sizeof buf)) > 0 || (got < 0 && errno == EINTR))
      changes += got > 0 ? got : 0;
    close(fds[0]);
    assert_false(WIFEXITED(wst)); /* killed, never failed */
    tu_reopen(env);
    sw_check(env, &c);
    e8s_close(env->st);
    env->st = NULL;
  }
  fprintf(stderr, "crash: session_write seed %u, %d kills, %ld session changes, checked after "
          "every kill\n", seed, kills, changes);
  assert_true(changes > 0);
  tu_reopen(env);
}

/* ---------------------------------------------------------------- replay
 * Puts are durable once their segment fdatasync is done; the LMDB commit that follows is lazy
 * and replay at open indexes what a lost commit would have. Child: puts batches (each one
 * announced first), with E8S_FAULT_CRASH_AFTER_SYNC armed to SIGKILL it after the segment
 * fdatasync of a random group, before that group's LMDB stage (the segment is often a new one,
 * 1 MiB segments). After reopen: every acknowledged chunk and every chunk of the batch that
 * died between its sync and its index stage reads back byte-identical, replay counted exactly
 * the latter, and check() finds nothing else (E8S_CRASH_KILLS_REPLAY kills per engine,
 * default 25). Without replay (the tail cut at open) the dead batch is missing. */
#define INTENT_FLAG 0x40000000u

static void replay_child(tu_env *env, uint32_t base, int wfd, unsigned skip) {
  e8s_store *st;
  if (e8s_open(&env->cfg, &st) != E8S_OK) _exit(3);
  e8s_test_fault_set(E8S_FAULT_CRASH_AFTER_SYNC, skip, 1);
  uint32_t next = base;
  for (int b = 0; next + 8 < base + PER_RUN; b++) {
    int n = 1 + b % 6;
    e8s_put_rec r[8];
    uint32_t tok[8][CT], msg[8];
    uint8_t *pl[8];
    memset(r, 0, sizeof r);
    for (int j = 0; j < n; j++) {
      uint32_t i = next++;
      key_of(env, i, tok[j], r[j].key);
      r[j].tokens = tok[j];
      r[j].n_tokens = CT;
      pl[j] = malloc(pbytes(i));
      tu_payload(pl[j], pbytes(i), i);
      r[j].payload = pl[j];
      r[j].payload_bytes = pbytes(i);
      msg[j] = i | INTENT_FLAG;
    }
    if (write(wfd, msg, (size_t)n * 4) != (ssize_t)n * 4) _exit(4);
    e8s_put(st, env->ns, env->fp, r, (size_t)n);
    int m = 0;
    for (int j = 0; j < n; j++) {
      if (r[j].result == E8S_OK) msg[m++] = msg[j] & ~INTENT_FLAG;
      free(pl[j]);
    }
    if (m && write(wfd, msg, (size_t)m * 4) != (ssize_t)m * 4) _exit(4);
  }
  _exit(6); /* the fault never fired */
}

static void test_crash_replay(void **state) {
  tu_env *env = *state;
  int kills = env_int("E8S_CRASH_KILLS_REPLAY", 25);
  env->cfg.segment_bytes = 1 << 20;
  e8s_close(env->st);
  env->st = NULL;
  uint8_t *status = calloc((size_t)kills * PER_RUN, 1);
  unsigned seed = (unsigned)time(NULL) ^ (unsigned)getpid();
  long replayed = 0;
  for (int k = 0; k < kills; k++) {
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    uint32_t base = (uint32_t)k * PER_RUN;
    unsigned skip = rand_r(&seed) % 24;
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
      close(fds[0]);
      replay_child(env, base, fds[1], skip);
    }
    close(fds[1]);
    int wst;
    assert_int_equal(waitpid(pid, &wst, 0), pid);
    assert_true(WIFSIGNALED(wst) && WTERMSIG(wst) == SIGKILL); /* the fault fired */
    uint32_t msg[256];
    ssize_t got;
    while ((got = read(fds[0], msg, sizeof msg)) > 0 || (got < 0 && errno == EINTR))
      for (ssize_t j = 0; j < got / 4; j++) {
        uint32_t v = msg[j] & ~INTENT_FLAG;
        assert_true(v >= base && v < base + PER_RUN);
        status[v] = msg[j] & INTENT_FLAG ? 4 : 1;
      }
    close(fds[0]);
    uint64_t dead = 0; /* the batch killed between its fdatasync and its index stage */
    for (uint32_t i = base; i < base + PER_RUN; i++)
      if (status[i] == 4) status[i] = 1, dead++;
    assert_true(dead >= 1 && dead <= 6);
    tu_reopen(env);
    assert_int_equal(e8s_test_replayed_at_open(env->st), dead);
    replayed += (long)dead;
    check(env, status, base, base + PER_RUN);
    e8s_close(env->st);
    env->st = NULL;
  }
  fprintf(stderr, "crash: replay seed %u, %d kills after a segment fdatasync, %ld chunks "
          "replayed at open, all checked\n", seed, kills, replayed);
  tu_reopen(env);
  free(status);
}

/* A lazy commit lost (what a power loss can do to the last put's LMDB commit): the put said
 * success, the index does not have it; the next open replays it from the segment, while a put
 * that failed (fdatasync EIO) before it stays invisible. A second open replays nothing. */
static void test_replay_lost_commit(void **state) {
  tu_env *env = *state;
  uint32_t ta[4 * CT], tb[4 * CT], tc[2 * CT];
  uint8_t ka[4][32], kb[4][32], kc[2][32];
  tu_tokens(ta, 4 * CT, 11), tu_tokens(tb, 4 * CT, 22), tu_tokens(tc, 2 * CT, 33);
  assert_int_equal(tu_put_chain(env, ta, 4, CT, 500, 3000, ka), E8S_OK);
  e8s_test_fault_set(E8S_FAULT_FSYNC_EIO, 0, 1);
  assert_int_not_equal(tu_put_chain(env, tc, 2, CT, 700, 4000, kc), E8S_OK);
  e8s_test_fault_set(E8S_FAULT_INDEX_LOST, 0, 1);
  assert_int_equal(tu_put_chain(env, tb, 4, CT, 600, 5000, kb), E8S_OK);
  assert_int_equal(e8s_test_fault_hits(), 1);
  e8s_test_fault_set(E8S_FAULT_NONE, 0, 0);
  e8s_chunk_info ci;
  assert_int_equal(e8s_chunk_stat(env->st, env->ns, kb[0], &ci), E8S_ERR_NOTFOUND);
  tu_reopen(env);
  assert_int_equal(e8s_test_replayed_at_open(env->st), 4);
  for (int i = 0; i < 4; i++) {
    assert_int_equal(tu_check(env, ka[i], 500 + (uint32_t)i, 3000), E8S_OK);
    assert_int_equal(tu_check(env, kb[i], 600 + (uint32_t)i, 5000), E8S_OK);
  }
  for (int i = 0; i < 2; i++)
    assert_int_equal(e8s_chunk_stat(env->st, env->ns, kc[i], &ci), E8S_ERR_NOTFOUND);
  e8s_stats s;
  assert_int_equal(e8s_stats_get(env->st, &s), E8S_OK);
  assert_int_equal(s.chunks, 8);
  assert_int_equal(s.used_bytes, 4 * (3000 + E8S_RECORD_HEADER_BYTES) +
                                     4 * (5000 + E8S_RECORD_HEADER_BYTES));
  e8s_verify_report vr;
  assert_int_equal(e8s_verify(env->st, &vr, NULL, NULL), E8S_OK);
  assert_int_equal(vr.chunks_checked, 8);
  assert_int_equal(vr.newly_quarantined, 0);
  tu_reopen(env);
  assert_int_equal(e8s_test_replayed_at_open(env->st), 0);
  assert_int_equal(tu_check(env, kb[3], 603, 5000), E8S_OK);
}

static void test_crash_kill(void **state) { crash_kill(*state, env_int("E8S_CRASH_KILLS", 110), 1); }

static void test_crash_kill_threads(void **state) {
  crash_kill(*state, env_int("E8S_CRASH_KILLS_MT", 40), 4);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_crash_kill, tu_setup, tu_teardown),
      cmocka_unit_test_setup_teardown(test_crash_kill_threads, tu_setup, tu_teardown),
      cmocka_unit_test_setup_teardown(test_crash_session_write, tu_setup, tu_teardown),
      cmocka_unit_test_setup_teardown(test_replay_lost_commit, tu_setup, tu_teardown),
      cmocka_unit_test_setup_teardown(test_crash_replay, tu_setup, tu_teardown),
  };
  return TU_RUN_BOTH("store_crash", tests);
}
