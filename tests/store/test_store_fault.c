/* test_store_fault.c: faults injected one at a time (EIO and ENOSPC on write, fsync failure,
 * short writes, LMDB map full injected and real), io_uring refused, CRC corruption ->
 * quarantine while the rest keeps serving, verify, compaction (also with a reader holding the
 * old segment). Runs on both io engines. */
#include <dirent.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "store/e8store_test.h"
#include "tests/store/store_test_util.h"

#define CT 32
#define PB 3000

/* Puts 3 one-chunk chains (seeds s, s+1, s+2) in one batch; results in res[3]. */
static int put3(tu_env *env, uint32_t s, uint8_t keys[3][32], int res[3]) {
  uint32_t tok[3][CT];
  uint8_t *pl[3];
  e8s_put_rec r[3];
  memset(r, 0, sizeof r);
  for (int i = 0; i < 3; i++) {
    tu_tokens(tok[i], CT, s + i);
    assert_int_equal(e8s_chunk_key(env->salt, env->fp, NULL, tok[i], CT, r[i].key), 0);
    memcpy(keys[i], r[i].key, 32);
    r[i].tokens = tok[i];
    r[i].n_tokens = CT;
    pl[i] = malloc(PB);
    tu_payload(pl[i], PB, s + i);
    r[i].payload = pl[i];
    r[i].payload_bytes = PB;
  }
  int rc = e8s_put(env->st, env->ns, env->fp, r, 3);
  for (int i = 0; i < 3; i++) res[i] = r[i].result, free(pl[i]);
  return rc;
}

static int visible(tu_env *env, const uint8_t key[32]) {
  e8s_chunk_info ci;
  return e8s_chunk_stat(env->st, env->ns, key, &ci) == E8S_OK;
}

/* The middle record's write fails with err: it alone fails, never becomes visible. */
static void one_write_fault(tu_env *env, e8s_fault kind, int want) {
  uint8_t k[3][32];
  int res[3];
  e8s_test_fault_set(kind, 1, 1);
  int rc = put3(env, 100, k, res);
  assert_int_equal(e8s_test_fault_hits(), 1);
  e8s_test_fault_set(E8S_FAULT_NONE, 0, 0);
  assert_int_equal(rc, want);
  assert_int_equal(res[0], E8S_OK);
  assert_int_equal(res[1], want);
  assert_int_equal(res[2], E8S_OK);
  assert_false(visible(env, k[1]));
  assert_int_equal(tu_check(env, k[0], 100, PB), 0);
  assert_int_equal(tu_check(env, k[2], 102, PB), 0);
  tu_reopen(env);
  assert_false(visible(env, k[1]));
  assert_int_equal(tu_check(env, k[0], 100, PB), 0);
  assert_int_equal(tu_check(env, k[2], 102, PB), 0);
  /* a retry succeeds */
  assert_int_equal(put3(env, 100, k, res), E8S_OK);
  assert_int_equal(tu_check(env, k[1], 101, PB), 0);
  e8s_verify_report vr;
  assert_int_equal(e8s_verify(env->st, &vr, NULL, NULL), 0);
  assert_int_equal(vr.chunks_checked, 3);
  assert_int_equal(vr.newly_quarantined, 0);
}

static void test_write_eio(void **state) { one_write_fault(*state, E8S_FAULT_WRITE_EIO, E8S_ERR_IO); }
static void test_write_enospc(void **state) {
  one_write_fault(*state, E8S_FAULT_WRITE_ENOSPC, E8S_ERR_NOSPC);
}

static void test_fsync_failure(void **state) {
  tu_env *env = *state;
  uint8_t k[3][32], k0[3][32];
  int res[3];
  assert_int_equal(put3(env, 200, k0, res), E8S_OK);
  e8s_test_fault_set(E8S_FAULT_FSYNC_EIO, 0, 1);
  int rc = put3(env, 210, k, res);
  e8s_test_fault_set(E8S_FAULT_NONE, 0, 0);
  assert_int_equal(rc, E8S_ERR_IO);
  for (int i = 0; i < 3; i++) assert_int_equal(res[i], E8S_ERR_IO), assert_false(visible(env, k[i]));
  /* the segment is sealed; new writes go to a fresh one and work */
  uint8_t k2[3][32];
  assert_int_equal(put3(env, 220, k2, res), E8S_OK);
  e8s_chunk_info a, b;
  assert_int_equal(e8s_chunk_stat(env->st, env->ns, k0[0], &a), 0);
  assert_int_equal(e8s_chunk_stat(env->st, env->ns, k2[0], &b), 0);
  assert_true(b.segment_id > a.segment_id);
  tu_reopen(env);
  for (int i = 0; i < 3; i++) {
    assert_false(visible(env, k[i]));
    assert_int_equal(tu_check(env, k0[i], 200 + i, PB), 0);
    assert_int_equal(tu_check(env, k2[i], 220 + i, PB), 0);
  }
}

/* The same with 4 writer threads whose puts overlap in the write pipeline: one fdatasync fails
 * while other batches are written or waiting for theirs. Every acknowledged record reads back
 * (now and after a reopen), no failed one is ever visible. */
#define FT_THREADS 4
#define FT_BATCHES 8
typedef struct ft_arg { tu_env *env; uint32_t seed0; uint8_t k[FT_BATCHES][3][32]; int res[FT_BATCHES][3]; } ft_arg;

static void *ft_writer(void *vp) {
  ft_arg *a = vp;
  for (int b = 0; b < FT_BATCHES; b++) put3(a->env, a->seed0 + (uint32_t)b * 3, a->k[b], a->res[b]);
  return NULL;
}

static void check_ft(tu_env *env, ft_arg *a, int *ok, int *failed) {
  *ok = *failed = 0;
  for (int t = 0; t < FT_THREADS; t++)
    for (int b = 0; b < FT_BATCHES; b++)
      for (int i = 0; i < 3; i++) {
        if (a[t].res[b][i] == E8S_OK) {
          assert_int_equal(tu_check(env, a[t].k[b][i], a[t].seed0 + (uint32_t)b * 3 + (uint32_t)i, PB), 0);
          (*ok)++;
        } else {
          assert_int_equal(a[t].res[b][i], E8S_ERR_IO);
          assert_false(visible(env, a[t].k[b][i]));
          (*failed)++;
        }
      }
}

static void test_fsync_failure_concurrent(void **state) {
  tu_env *env = *state;
  ft_arg *a = calloc(FT_THREADS, sizeof *a);
  pthread_t th[FT_THREADS];
  e8s_test_fault_set(E8S_FAULT_FSYNC_EIO, 5, 1);
  for (int t = 0; t < FT_THREADS; t++) {
    a[t].env = env;
    a[t].seed0 = 1000u + (uint32_t)t * 100u;
    assert_int_equal(pthread_create(&th[t], NULL, ft_writer, &a[t]), 0);
  }
  for (int t = 0; t < FT_THREADS; t++) pthread_join(th[t], NULL);
  unsigned hits = e8s_test_fault_hits();
  e8s_test_fault_set(E8S_FAULT_NONE, 0, 0);
  assert_int_equal(hits, 1);
  int ok, failed;
  check_ft(env, a, &ok, &failed);
  assert_true(failed >= 1 && ok >= 1);
  tu_reopen(env);
  int ok2, failed2;
  check_ft(env, a, &ok2, &failed2);
  assert_int_equal(ok2, ok);
  free(a);
}

static void test_short_writes(void **state) {
  tu_env *env = *state;
  uint8_t k[3][32];
  int res[3];
  e8s_test_fault_set(E8S_FAULT_WRITE_SHORT, 0, 5);
  int rc = put3(env, 300, k, res);
  unsigned hits = e8s_test_fault_hits();
  e8s_test_fault_set(E8S_FAULT_NONE, 0, 0);
  assert_int_equal(rc, E8S_OK);
  assert_true(hits >= 3); /* each record was cut at least once and continued */
  tu_reopen(env);
  for (int i = 0; i < 3; i++) assert_int_equal(tu_check(env, k[i], 300 + i, PB), 0);
}

static void test_map_full_injected(void **state) {
  tu_env *env = *state;
  e8s_stats s0, s1;
  assert_int_equal(e8s_stats_get(env->st, &s0), 0);
  uint8_t k[3][32];
  int res[3];
  e8s_test_fault_set(E8S_FAULT_MAP_FULL, 0, 1);
  int rc = put3(env, 400, k, res);
  unsigned hits = e8s_test_fault_hits();
  e8s_test_fault_set(E8S_FAULT_NONE, 0, 0);
  assert_int_equal(hits, 1);
  assert_int_equal(rc, E8S_OK); /* grew the map and retried */
  assert_int_equal(e8s_stats_get(env->st, &s1), 0);
  assert_true(s1.map_bytes > s0.map_bytes);
  assert_int_equal(s1.chunks, 3);
  tu_reopen(env);
  for (int i = 0; i < 3; i++) assert_int_equal(tu_check(env, k[i], 400 + i, PB), 0);
}

/* A real map that cannot grow: MAPFULL to the caller, nothing half-visible, reads go on. */
static void test_map_full_real(void **state) {
  tu_env *env = *state;
  env->cfg.map_bytes = 256 << 10;
  env->cfg.map_max_bytes = 256 << 10;
  tu_reopen(env);
  uint8_t k[3][32], first[3][32];
  int res[3], rc = E8S_OK;
  assert_int_equal(put3(env, 500, first, res), E8S_OK);
  uint32_t s;
  for (s = 510; s < 100000 && rc == E8S_OK; s += 3) rc = put3(env, s, k, res);
  assert_int_equal(rc, E8S_ERR_MAPFULL);
  for (int i = 0; i < 3; i++)
    if (res[i] != E8S_OK) assert_false(visible(env, k[i]));
  assert_int_equal(tu_check(env, first[1], 501, PB), 0);
  /* with room to grow it continues */
  env->cfg.map_max_bytes = 64 << 20;
  tu_reopen(env);
  assert_int_equal(put3(env, s, k, res), E8S_OK);
  assert_int_equal(tu_check(env, k[2], s + 2, PB), 0);
  assert_int_equal(tu_check(env, first[0], 500, PB), 0);
}

static void test_uring_refused(void **state) {
  tu_env *env = *state;
  e8s_close(env->st);
  env->st = NULL;
  e8s_config c = env->cfg;
  c.io_engine = E8S_IO_AUTO;
  e8s_test_fault_set(E8S_FAULT_URING_EPERM, 0, 1);
  assert_int_equal(e8s_open(&c, &env->st), E8S_OK);
  assert_int_equal(e8s_io_engine_used(env->st), E8S_IO_PWRITE);
  e8s_close(env->st);
  env->st = NULL;
  c.io_engine = E8S_IO_URING;
  e8s_test_fault_set(E8S_FAULT_URING_EPERM, 0, 1);
  assert_int_equal(e8s_open(&c, &env->st), E8S_ERR_UNSUPPORTED);
  e8s_test_fault_set(E8S_FAULT_NONE, 0, 0);
  tu_reopen(env);
}

static void seg_path(tu_env *env, uint64_t id, char *p, size_t n) {
  snprintf(p, n, "%s/segments/%016llx.seg", env->dir, (unsigned long long)id);
}

static void corrupt(tu_env *env, const uint8_t key[32], uint64_t at) {
  e8s_chunk_info ci;
  assert_int_equal(e8s_chunk_stat(env->st, env->ns, key, &ci), 0);
  char p[300];
  seg_path(env, ci.segment_id, p, sizeof p);
  int fd = open(p, O_RDWR);
  assert_true(fd >= 0);
  uint8_t b;
  uint64_t off = ci.offset + E8S_RECORD_HEADER_BYTES + at;
  assert_int_equal(pread(fd, &b, 1, (off_t)off), 1);
  b ^= 0x40;
  assert_int_equal(pwrite(fd, &b, 1, (off_t)off), 1);
  close(fd);
}

static void test_corruption_quarantine(void **state) {
  tu_env *env = *state;
  uint32_t tok[3 * CT];
  tu_tokens(tok, 3 * CT, 600);
  uint8_t k[3][32], other[3][32];
  int res[3];
  assert_int_equal(tu_put_chain(env, tok, 3, CT, 600, PB, k), E8S_OK);
  assert_int_equal(put3(env, 700, other, res), E8S_OK);
  assert_int_equal(e8s_session_create(env->st, env->ns, "s", env->fp, NULL, 0, 0), 0);
  assert_int_equal(e8s_session_append(env->st, env->ns, "s", (const uint8_t(*)[32])k, 3), 0);
  corrupt(env, k[1], 1234);
  tu_reopen(env);
  assert_int_equal(tu_check(env, k[1], 601, PB), E8S_ERR_DATALOSS);
  assert_non_null(strstr(e8s_last_error_detail(), "CRC"));
  assert_int_equal(tu_check(env, k[1], 601, PB), E8S_ERR_DATALOSS); /* stays an error */
  assert_non_null(strstr(e8s_last_error_detail(), "CRC mismatch"));
  /* everything else keeps serving */
  assert_int_equal(tu_check(env, k[0], 600, PB), 0);
  assert_int_equal(tu_check(env, k[2], 602, PB), 0);
  for (int i = 0; i < 3; i++) assert_int_equal(tu_check(env, other[i], 700 + i, PB), 0);
  uint8_t got[3][32];
  e8s_lookup_result lr;
  assert_int_equal(e8s_lookup(env->st, env->ns, env->fp, tok, 3 * CT, CT, 0, got, 3, &lr), 0);
  assert_int_equal(lr.n_chunks, 1); /* the prefix ends before the lost chunk */
  e8s_quarantine_entry q[4];
  size_t n;
  int more;
  assert_int_equal(e8s_quarantine_list(env->st, NULL, q, 4, &n, &more), 0);
  assert_int_equal(n, 1);
  assert_memory_equal(q[0].key, k[1], 32);
  assert_int_not_equal(q[0].stored_crc, q[0].found_crc);
  e8s_stats s;
  assert_int_equal(e8s_stats_get(env->st, &s), 0);
  assert_int_equal(s.quarantined, 1);
  assert_int_equal(s.chunks, 5);
  /* verify finds a second corruption by itself */
  corrupt(env, other[2], 0);
  e8s_verify_report vr;
  assert_int_equal(e8s_verify(env->st, &vr, NULL, NULL), 0);
  assert_int_equal(vr.chunks_checked, 5);
  assert_int_equal(vr.newly_quarantined, 1);
  assert_int_equal(vr.quarantined, 2);
  assert_int_equal(tu_check(env, other[2], 702, PB), E8S_ERR_DATALOSS);
  /* the session still lists the lost chunk; deleting it works */
  assert_int_equal(e8s_session_delete(env->st, env->ns, "s"), 0);
  /* a re-put of the lost chunk repairs it */
  assert_int_equal(tu_put_chain(env, tok, 3, CT, 600, PB, k), E8S_OK);
  assert_int_equal(tu_check(env, k[1], 601, PB), 0);
  assert_int_equal(e8s_quarantine_list(env->st, NULL, q, 4, &n, &more), 0);
  assert_int_equal(n, 1);
}

static int count_segments(const char *dir) {
  char p[300];
  snprintf(p, sizeof p, "%s/segments", dir);
  DIR *d = opendir(p);
  int n = 0;
  for (struct dirent *de; d && (de = readdir(d));) n += strstr(de->d_name, ".seg") != NULL;
  if (d) closedir(d);
  return n;
}

static void test_compaction(void **state) {
  tu_env *env = *state;
  env->cfg.segment_bytes = 1 << 20;
  tu_reopen(env);
  enum { N = 15, B = 150000 };
  uint8_t k[N][32];
  uint32_t tok[CT];
  for (int i = 0; i < N; i++) {
    uint8_t kk[1][32];
    tu_tokens(tok, CT, 800 + i);
    assert_int_equal(tu_put_chain(env, tok, 1, CT, 800 + i, B, kk), E8S_OK);
    memcpy(k[i], kk[0], 32);
  }
  /* kill 5 of every 6 in the first segments (by record), keep 0, 6, 12 */
  for (int i = 0; i < N; i++)
    if (i % 6 != 0) assert_int_equal(e8s_chunk_delete(env->st, env->ns, k[i]), 0);
  e8s_stats s0, s1;
  assert_int_equal(e8s_stats_get(env->st, &s0), 0);
  /* a reader holds chunk 0 open across the compaction of its segment */
  e8s_chunk *ch;
  e8s_chunk_info ci;
  assert_int_equal(e8s_chunk_open(env->st, env->ns, k[0], &ch, &ci), 0);
  char old[300];
  seg_path(env, ci.segment_id, old, sizeof old);
  e8s_compact_report rep;
  assert_int_equal(e8s_compact(env->st, 0.5, &rep, NULL, NULL), 0);
  assert_true(rep.segments_compacted >= 1);
  assert_true(rep.records_moved >= 1);
  struct stat sb;
  assert_int_equal(stat(old, &sb), 0); /* still there: a reader uses it */
  uint8_t *buf = malloc(B), *want = malloc(B);
  tu_payload(want, B, 800);
  assert_int_equal(e8s_chunk_read(ch, buf, B), 0);
  assert_memory_equal(buf, want, B);
  e8s_chunk_close(ch);
  assert_int_not_equal(stat(old, &sb), 0); /* gone with its last reader */
  assert_int_equal(e8s_stats_get(env->st, &s1), 0);
  assert_true(s1.disk_bytes < s0.disk_bytes);
  assert_int_equal(s1.used_bytes, s0.used_bytes);
  for (int i = 0; i < N; i += 6) assert_int_equal(tu_check(env, k[i], 800 + i, B), 0);
  tu_reopen(env);
  for (int i = 0; i < N; i += 6) assert_int_equal(tu_check(env, k[i], 800 + i, B), 0);
  assert_true(count_segments(env->dir) <= 3);
  e8s_verify_report vr;
  assert_int_equal(e8s_verify(env->st, &vr, NULL, NULL), 0);
  assert_int_equal(vr.newly_quarantined, 0);
  assert_int_equal(vr.chunks_checked, 3);
  free(buf);
  free(want);
}

/* A segment file removed or lost outside the store (the index still points into it): reads
 * said NOTFOUND ("chunk not found") forever while lookups kept matching the chunks, and verify
 * counted them as checked and sound. Now the chunk is lost data: DATALOSS, quarantined (reason
 * "unreadable": found CRC = stored), found by verify too; the other segments keep serving. */
static void test_missing_segment_file(void **state) {
  tu_env *env = *state;
  env->cfg.segment_bytes = 1 << 20;
  tu_reopen(env);
  enum { N = 15, B = 150000 };
  uint8_t k[N][32];
  uint64_t seg[N];
  uint32_t tok[N][CT];
  for (int i = 0; i < N; i++) {
    uint8_t kk[1][32];
    tu_tokens(tok[i], CT, 900 + i);
    assert_int_equal(tu_put_chain(env, tok[i], 1, CT, 900 + i, B, kk), E8S_OK);
    memcpy(k[i], kk[0], 32);
    e8s_chunk_info ci;
    assert_int_equal(e8s_chunk_stat(env->st, env->ns, k[i], &ci), 0);
    seg[i] = ci.segment_id;
  }
  uint64_t a = seg[0], b = seg[N / 2];
  assert_true(a != b && b != seg[N - 1]); /* neither is the segment being appended to */
  int in_a = 0, in_b = 0;
  for (int i = 0; i < N; i++) in_a += seg[i] == a, in_b += seg[i] == b;
  e8s_close(env->st);
  env->st = NULL;
  char p[300];
  seg_path(env, a, p, sizeof p);
  assert_int_equal(unlink(p), 0);
  seg_path(env, b, p, sizeof p);
  assert_int_equal(unlink(p), 0);
  tu_reopen(env);
  /* a read of a chunk of segment a: lost, and stays lost */
  assert_int_equal(tu_check(env, k[0], 900, B), E8S_ERR_DATALOSS);
  assert_non_null(strstr(e8s_last_error_detail(), "missing"));
  assert_int_equal(tu_check(env, k[0], 900, B), E8S_ERR_DATALOSS);
  assert_non_null(strstr(e8s_last_error_detail(), "unreadable")); /* not "CRC", no raw ns */
  assert_non_null(strstr(e8s_last_error_detail(), "Z (segment"));
  uint8_t got[1][32];
  e8s_lookup_result lr;
  assert_int_equal(e8s_lookup(env->st, env->ns, env->fp, tok[0], CT, CT, 0, got, 1, &lr), 0);
  assert_int_equal(lr.n_chunks, 0);
  /* verify finds the rest of both segments' chunks */
  e8s_verify_report vr;
  assert_int_equal(e8s_verify(env->st, &vr, NULL, NULL), 0);
  assert_int_equal(vr.newly_quarantined, (uint64_t)(in_a - 1 + in_b));
  assert_int_equal(vr.quarantined, (uint64_t)(in_a + in_b));
  e8s_quarantine_entry q[N];
  size_t n;
  int more;
  assert_int_equal(e8s_quarantine_list(env->st, NULL, q, N, &n, &more), 0);
  assert_int_equal(n, (size_t)(in_a + in_b));
  assert_int_equal(q[0].stored_crc, q[0].found_crc);
  for (int i = 0; i < N; i++) {
    int want = seg[i] == a || seg[i] == b ? E8S_ERR_DATALOSS : 0;
    assert_int_equal(tu_check(env, k[i], 900 + i, B), want);
    assert_int_equal(e8s_lookup(env->st, env->ns, env->fp, tok[i], CT, CT, 0, got, 1, &lr), 0);
    assert_int_equal(lr.n_chunks, want ? 0 : 1);
  }
  /* a re-put stores a lost chunk afresh */
  assert_int_equal(tu_put_chain(env, tok[0], 1, CT, 900, B, NULL), E8S_OK);
  assert_int_equal(tu_check(env, k[0], 900, B), 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_write_eio, tu_setup, tu_teardown),
      cmocka_unit_test_setup_teardown(test_write_enospc, tu_setup, tu_teardown),
      cmocka_unit_test_setup_teardown(test_fsync_failure, tu_setup, tu_teardown),
      cmocka_unit_test_setup_teardown(test_fsync_failure_concurrent, tu_setup, tu_teardown),
      cmocka_unit_test_setup_teardown(test_short_writes, tu_setup, tu_teardown),
      cmocka_unit_test_setup_teardown(test_map_full_injected, tu_setup, tu_teardown),
      cmocka_unit_test_setup_teardown(test_map_full_real, tu_setup, tu_teardown),
      cmocka_unit_test_setup_teardown(test_uring_refused, tu_setup, tu_teardown),
      cmocka_unit_test_setup_teardown(test_corruption_quarantine, tu_setup, tu_teardown),
      cmocka_unit_test_setup_teardown(test_compaction, tu_setup, tu_teardown),
      cmocka_unit_test_setup_teardown(test_missing_segment_file, tu_setup, tu_teardown),
  };
  return TU_RUN_BOTH("store_fault", tests);
}
