/* test_store_space.c: a really full disk. Each test mounts a 4 MiB tmpfs (in a private mount
 * namespace: as root, or in a user namespace otherwise; the program fails, never skips, if
 * neither is allowed) and fills it with sessions of one chunk through the store:
 *   - every put that fails says E8S_ERR_NOSPC (never IO: LMDB's short write on a full disk is
 *     EIO), and the failed chunk is not visible, now or after a reopen;
 *   - deleting sessions on the full disk works (the index commits into its reserve), and a put
 *     after them works (unpinned chunks are evicted until a segment file goes);
 *   - every acknowledged chunk whose session was kept reads back byte-identical, also after a
 *     reopen on the full disk;
 *   - deleting sessions gives their disk back also where no segment empties or fits a copy
 *     (segments written before the size bound, few sessions deleted): the dead records'
 *     blocks are punched, never a live one (verify, readers during the punching, kill -9 of a
 *     writer in the middle of it), and a file system without hole punching gets a NOSPC that
 *     says so;
 *   - opening a NEW store on a full disk fails E8S_ERR_NOSPC naming the directory (it was a
 *     SIGBUS: LMDB writes its sparse lock file through mmap), run in a child process so that a
 *     signal fails the test; every open leaves LMDB's lock file fully allocated. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include "store/e8store_test.h"
#include "tests/store/store_test_util.h"

#define CHUNK_BYTES (16u << 10)
#define MAX_PUTS 1000

static int write_file(const char *path, const char *text) {
  int fd = open(path, O_WRONLY);
  if (fd < 0) return -1;
  ssize_t n = write(fd, text, strlen(text));
  close(fd);
  return n == (ssize_t)strlen(text) ? 0 : -1;
}

/* A private mount namespace for this process (single-threaded at this point). */
static int private_mounts(void) {
  uid_t uid = getuid();
  gid_t gid = getgid();
  if (uid == 0 && unshare(CLONE_NEWNS) == 0) goto priv;
  if (unshare(CLONE_NEWUSER | CLONE_NEWNS) != 0) return -1;
  char map[64];
  snprintf(map, sizeof map, "0 %u 1", (unsigned)uid);
  if (write_file("/proc/self/setgroups", "deny") || write_file("/proc/self/uid_map", map))
    return -1;
  snprintf(map, sizeof map, "0 %u 1", (unsigned)gid);
  if (write_file("/proc/self/gid_map", map)) return -1;
priv:
  return mount("none", "/", NULL, MS_REC | MS_PRIVATE, NULL);
}

typedef struct space_env {
  tu_env env;
  char mnt[200];
} space_env;

static int setup_sized(void **state, const char *size_opt) {
  space_env *s = calloc(1, sizeof *s);
  assert_non_null(s);
  tu_mkdtemp(s->mnt, sizeof s->mnt);
  if (mount("tmpfs", s->mnt, "tmpfs", 0, size_opt) != 0) fail_msg("mount tmpfs: %s", strerror(errno));
  tu_env *env = &s->env;
  snprintf(env->dir, sizeof env->dir, "%s/data", s->mnt);
  tu_config(env);
  env->cfg.segment_bytes = 1u << 20;
  int e = e8s_open(&env->cfg, &env->st);
  assert_int_equal(e, E8S_OK);
  e8s_ns_info ns;
  assert_int_equal(e8s_ns_create(env->st, "t", NULL, 0, &ns), E8S_OK);
  env->ns = ns.id;
  memcpy(env->salt, ns.salt, 32);
  memset(env->fp, 0x5a, 32);
  assert_int_equal(e8s_fp_register(env->st, env->fp, "fp", 2), E8S_OK);
  *state = s;
  return 0;
}

static int setup(void **state) { return setup_sized(state, "size=4m"); }
static int setup_16m(void **state) { return setup_sized(state, "size=16m"); }

static int teardown(void **state) {
  space_env *s = *state;
  e8s_test_uncapped_segments(0);
  e8s_test_no_punch(0);
  e8s_close(s->env.st);
  umount2(s->mnt, MNT_DETACH);
  rmdir(s->mnt);
  free(s);
  return 0;
}

/* Reopens env's (empty) store with 1 MiB segments on the 4 MiB disk, as a store written before
 * the segment size was bounded by the index reserve (store_space.c) has them: a half-live
 * segment's copy (~530 KB) does not fit in the lent reserve (~192 KB). */
static void use_big_segments(tu_env *env) {
  e8s_test_uncapped_segments(1);
  tu_reopen(env);
}

static void name_of(char *out, size_t n, int i) { snprintf(out, n, "s%d", i); }

/* Puts chunk i (seed i) and a session "s<i>" pinning it; the put's rc. */
static int put_session(tu_env *env, int i, uint8_t key[32]) {
  uint32_t toks[16];
  tu_tokens(toks, 16, (uint32_t)i);
  uint8_t keys[1][32];
  int e = tu_put_chain(env, toks, 1, 16, (uint32_t)i, CHUNK_BYTES, keys);
  memcpy(key, keys[0], 32);
  if (e) return e;
  char nm[32];
  name_of(nm, sizeof nm, i);
  e8s_session_change chg = {.create = 1, .fp_id = env->fp, .keys = (const uint8_t(*)[32])keys,
                            .n_keys = 1};
  return e8s_session_write(env->st, env->ns, nm, &chg);
}

#define DELETED (-1) /* acked[i]: stored, then its session deleted (its chunk may stay cached) */

/* Deletes session "s<i>" (it must exist) and marks it deleted. */
static void delete_session(tu_env *env, int i, int acked[]) {
  char nm[32];
  name_of(nm, sizeof nm, i);
  assert_int_equal(e8s_session_delete(env->st, env->ns, nm), E8S_OK);
  acked[i] = DELETED;
}

/* Fills the disk; acked[i] = 1 for sessions stored. Returns how many were; failed_key gets the
 * key of the first failed put. */
static int fill(tu_env *env, uint8_t (*keys)[32], int *acked, int *n_tried) {
  int n_ok = 0, fails = 0, i;
  for (i = 0; i < MAX_PUTS && fails < 4; i++) {
    int e = put_session(env, i, keys[i]);
    acked[i] = e == E8S_OK;
    if (e == E8S_OK) {
      n_ok++;
      continue;
    }
    if (e != E8S_ERR_NOSPC)
      fail_msg("put %d on a full disk: %s (%s), want E8S_ERR_NOSPC", i, e8s_error_name(e),
               e8s_last_error_detail());
    fails++;
  }
  if (fails < 4) fail_msg("a 4 MiB disk took %d chunks of %u bytes", MAX_PUTS, CHUNK_BYTES);
  *n_tried = i;
  return n_ok;
}

/* Fills the disk of 1 MiB segments (use_big_segments) as fill does; more than min_ok sessions
 * must be stored. Returns how many were. */
static int fill_big(tu_env *env, uint8_t (*keys)[32], int *acked, int *n_tried, int min_ok) {
  use_big_segments(env);
  int ok = fill(env, keys, acked, n_tried);
  assert_true(ok > min_ok);
  return ok;
}

/* Deletes every other stored session (s1, s3, ... of the first n, on the full disk); how many. */
static int delete_every_other(tu_env *env, int *acked, int n) {
  int deleted = 0;
  for (int i = 1; i < n; i += 2) {
    if (!acked[i]) continue;
    delete_session(env, i, acked);
    deleted++;
  }
  return deleted;
}

static void check_kept(tu_env *env, uint8_t (*keys)[32], const int *acked, int n, int from) {
  for (int i = from; i < n; i++) {
    e8s_chunk_info ci;
    if (acked[i] == DELETED) { /* evicted, or still a cache entry with its own bytes */
      int e = e8s_chunk_stat(env->st, env->ns, keys[i], &ci);
      if (e == E8S_OK) e = tu_check(env, keys[i], (uint32_t)i, CHUNK_BYTES);
      if (e != E8S_OK && e != E8S_ERR_NOTFOUND)
        fail_msg("deleted session %d's chunk: %s (%s)", i, e8s_error_name(e),
                 e8s_last_error_detail());
      continue;
    }
    if (!acked[i]) {
      assert_int_equal(e8s_chunk_stat(env->st, env->ns, keys[i], &ci), E8S_ERR_NOTFOUND);
      continue;
    }
    int e = tu_check(env, keys[i], (uint32_t)i, CHUNK_BYTES);
    if (e) fail_msg("chunk %d: %s (%s)", i, e8s_error_name(e), e8s_last_error_detail());
    char nm[32];
    name_of(nm, sizeof nm, i);
    e8s_session_info si;
    assert_int_equal(e8s_session_get(env->st, env->ns, nm, &si, NULL, 0, NULL, 0), E8S_OK);
  }
}

static void test_full_disk_delete_frees(void **state) {
  space_env *s = *state;
  tu_env *env = &s->env;
  static uint8_t keys[MAX_PUTS][32];
  static int acked[MAX_PUTS];
  int n;
  int ok = fill(env, keys, acked, &n);
  assert_true(ok > 20);
  check_kept(env, keys, acked, n, 0);
  /* delete the older half of the sessions: every delete commits on the full disk */
  int half = n / 2;
  for (int i = 0; i < half; i++) {
    if (!acked[i]) continue;
    char nm[32];
    name_of(nm, sizeof nm, i);
    int e = e8s_session_delete(env->st, env->ns, nm);
    if (e) fail_msg("delete %s on a full disk: %s (%s)", nm, e8s_error_name(e),
                    e8s_last_error_detail());
  }
  e8s_compact_report rep;
  assert_int_equal(e8s_compact(env->st, 0.1, &rep, NULL, NULL), E8S_OK);
  /* a new put evicts the unpinned chunks and gets their segment's space */
  uint8_t key[32];
  int e = put_session(env, 5000, key);
  if (e) fail_msg("put after deletes: %s (%s)", e8s_error_name(e), e8s_last_error_detail());
  assert_int_equal(tu_check(env, key, 5000, CHUNK_BYTES), E8S_OK);
  check_kept(env, keys, acked, n, half);
  /* reopen on the (again nearly) full disk: the same sessions, the same bytes */
  tu_reopen(env);
  check_kept(env, keys, acked, n, half);
  assert_int_equal(tu_check(env, key, 5000, CHUNK_BYTES), E8S_OK);
  e8s_stats stt;
  assert_int_equal(e8s_stats_get(env->st, &stt), E8S_OK);
  int kept = 1;
  for (int i = half; i < n; i++) kept += acked[i];
  assert_int_equal(stt.sessions, (uint64_t)kept);
}

static void test_full_disk_reopen_then_delete(void **state) {
  space_env *s = *state;
  tu_env *env = &s->env;
  static uint8_t keys[MAX_PUTS][32];
  static int acked[MAX_PUTS];
  int n;
  fill(env, keys, acked, &n);
  tu_reopen(env); /* open on a full disk: recovery and the reserve's allocation must cope */
  check_kept(env, keys, acked, n, 0);
  uint8_t key[32];
  int e = put_session(env, 7000, key);
  assert_int_equal(e, E8S_ERR_NOSPC); /* still full: everything is pinned */
  for (int i = 0; i < n; i++) {
    if (!acked[i]) continue;
    char nm[32];
    name_of(nm, sizeof nm, i);
    e = e8s_session_delete(env->st, env->ns, nm);
    if (e) fail_msg("delete %s after reopen: %s (%s)", nm, e8s_error_name(e),
                    e8s_last_error_detail());
  }
  e = put_session(env, 7001, key);
  if (e) fail_msg("put after deleting everything: %s (%s)", e8s_error_name(e),
                  e8s_last_error_detail());
}

/* Segment files of env's store: how many, and their bytes (size, allocated). */
typedef struct seg_sum { int files; unsigned long long size, blocks, largest; } seg_sum;
static seg_sum seg_files(tu_env *env) {
  seg_sum r = {0, 0, 0, 0};
  char dir[600];
  snprintf(dir, sizeof dir, "%s/segments", env->dir);
  DIR *d = opendir(dir);
  assert_non_null(d);
  for (struct dirent *de; (de = readdir(d)) != NULL;) {
    if (!strstr(de->d_name, ".seg")) continue;
    char p[900];
    snprintf(p, sizeof p, "%s/%s", dir, de->d_name);
    struct stat sb;
    if (stat(p, &sb) != 0) continue;
    r.files++;
    r.size += (unsigned long long)sb.st_size;
    r.blocks += (unsigned long long)sb.st_blocks * 512;
    if ((unsigned long long)sb.st_size > r.largest) r.largest = (unsigned long long)sb.st_size;
  }
  closedir(d);
  return r;
}

static unsigned long long disk_free(tu_env *env) {
  struct statvfs v;
  assert_int_equal(statvfs(env->dir, &v), 0);
  return (unsigned long long)v.f_bavail * v.f_frsize;
}

/* Every other session deleted on a full disk of 1 MiB segments (use_big_segments) of a file
 * system without hole punching (e8s_test_no_punch), then a put (evicts the unpinned chunks:
 * every segment is half dead, none empty, none fits the lent reserve) and a Compact: both stay
 * E8S_ERR_NOSPC and say why deleting did not help (no hole punching, the emptiest segment's
 * copy does not fit). A Compact that fails on the full disk must
 * fail E8S_ERR_NOSPC and leave nothing behind: no new segment file, no segment file longer,
 * the disk's free bytes given back (its partial copy was left in the active segment: the last
 * blocks of the disk gone, STORE-1), the index unchanged; a later put (that may still fail
 * NOSPC) writes no partial record either; every kept session reads back, also after a reopen. */
static void test_full_disk_failed_compact_leaves_nothing(void **state) {
  space_env *s = *state;
  tu_env *env = &s->env;
  static uint8_t keys[MAX_PUTS][32];
  static int acked[MAX_PUTS];
  int n;
  e8s_test_no_punch(1); /* else the dead records' blocks come back and Compact finds room */
  fill_big(env, keys, acked, &n, 20);
  delete_every_other(env, acked, n);
  uint8_t key[32];
  int e = put_session(env, 5000, key);
  if (e != E8S_ERR_NOSPC || !strstr(e8s_last_error_detail(), "does not punch holes"))
    fail_msg("put after deletes: %s (%s), want NOSPC saying why", e8s_error_name(e),
             e8s_last_error_detail());
  for (int round = 0; round < 3; round++) {
    seg_sum before = seg_files(env);
    unsigned long long free0 = disk_free(env);
    e8s_stats st0, st1;
    assert_int_equal(e8s_stats_get(env->st, &st0), E8S_OK);
    e8s_compact_report rep;
    e = e8s_compact(env->st, 0.1, &rep, NULL, NULL);
    printf("compact on the full disk, round %d: %s (%s), %llu segments compacted\n", round,
           e8s_error_name(e), e ? e8s_last_error_detail() : "", (unsigned long long)rep.segments_compacted);
    if (e == E8S_OK) break;
    if (e != E8S_ERR_NOSPC)
      fail_msg("compact on a full disk: %s (%s)", e8s_error_name(e), e8s_last_error_detail());
    if (!strstr(e8s_last_error_detail(), "does not punch holes"))
      fail_msg("compact's NOSPC does not say why deleting did not help: %s",
               e8s_last_error_detail());
    seg_sum after = seg_files(env);
    unsigned long long free1 = disk_free(env);
    if (after.files > before.files || after.size > before.size || after.blocks > before.blocks ||
        free1 < free0)
      fail_msg("round %d: a failed compact left %d segment files (%llu bytes, %llu allocated; "
               "%llu free) where there were %d (%llu, %llu; %llu free): %s", round, after.files,
               after.size, after.blocks, free1, before.files, before.size, before.blocks, free0,
               e8s_last_error_detail());
    assert_int_equal(e8s_stats_get(env->st, &st1), E8S_OK);
    assert_int_equal(st1.chunks, st0.chunks);
    before = after;
    free0 = free1;
    e = put_session(env, 6000 + round, key); /* refused or stored, never a partial record */
    if (e != E8S_OK && e != E8S_ERR_NOSPC)
      fail_msg("put after a failed compact: %s (%s)", e8s_error_name(e),
               e8s_last_error_detail());
    after = seg_files(env);
    if (e == E8S_ERR_NOSPC && (after.size > before.size || after.blocks > before.blocks))
      fail_msg("a refused put grew the segment files from %llu (%llu allocated) to %llu (%llu)",
               before.size, before.blocks, after.size, after.blocks);
  }
  check_kept(env, keys, acked, n, 0);
  tu_reopen(env);
  check_kept(env, keys, acked, n, 0);
}

/* A full disk of 1 MiB segments (use_big_segments) where deleting sessions leaves every
 * segment with a few live chunks (so no segment file can become empty by eviction): the
 * oldest segment keeps 2 of its first 60 sessions and its last 3. The next put evicts, then compacts that mostly dead segment (its live records
 * fit in half the index reserve) and gets its file's space: it succeeds (STORE-1: it stayed
 * NOSPC until almost everything was deleted). Every kept session reads back, also after a
 * reopen. */
static void test_full_disk_put_compacts_mostly_dead_segment(void **state) {
  space_env *s = *state;
  tu_env *env = &s->env;
  static uint8_t keys[MAX_PUTS][32];
  static int acked[MAX_PUTS];
  int n;
  fill_big(env, keys, acked, &n, 100);
  for (int i = 0; i < 60; i++) { /* a segment holds 63 of these */
    if (i % 30 == 0 || !acked[i]) continue;
    delete_session(env, i, acked);
  }
  uint8_t key[32];
  int e = put_session(env, 5000, key);
  if (e) fail_msg("put after deleting 58 sessions of the oldest segment: %s (%s)",
                  e8s_error_name(e), e8s_last_error_detail());
  assert_int_equal(tu_check(env, key, 5000, CHUNK_BYTES), E8S_OK);
  check_kept(env, keys, acked, n, 0);
  tu_reopen(env);
  check_kept(env, keys, acked, n, 0);
  assert_int_equal(tu_check(env, key, 5000, CHUNK_BYTES), E8S_OK);
}

/* STORE-1's last case: every other session deleted on a full disk, so every segment stays about
 * half live: no segment file becomes empty by eviction and none is mostly dead. The next put
 * evicts the unpinned chunks, compacts the emptiest segments and succeeds; a Compact succeeds;
 * puts go on until the disk is full again and store at least three quarters of the bytes
 * deleted (measured: 98-101 of 104-106). The store bounds its segments by the index reserve
 * (here 128 KiB segments, a 256 KiB reserve); with the 1 MiB segments asked for, a half-live
 * segment's copy needs ~530 KB and the reserve lends at most 192 KB: every put and every
 * Compact stayed NOSPC (STORE-1). Every kept session and every
 * new one reads back, also after a reopen. */
static void test_full_disk_every_other_deleted_takes_puts(void **state) {
  space_env *s = *state;
  tu_env *env = &s->env;
  static uint8_t keys[MAX_PUTS][32], nkeys[MAX_PUTS][32];
  static int acked[MAX_PUTS];
  int n;
  int ok = fill(env, keys, acked, &n);
  assert_true(ok > 100);
  seg_sum sz = seg_files(env); /* 4 MiB disk: a 256 KiB reserve, so segments of 128 KiB */
  if (sz.largest > (128u << 10))
    fail_msg("a segment file of %llu bytes on a 4 MiB disk (at most 128 KiB)", sz.largest);
  int deleted = delete_every_other(env, acked, n);
  int e = put_session(env, 5000, nkeys[0]);
  if (e) fail_msg("put after deleting every other session (%d of %d): %s (%s)", deleted, ok,
                  e8s_error_name(e), e8s_last_error_detail());
  e8s_compact_report rep;
  e = e8s_compact(env->st, 0.1, &rep, NULL, NULL);
  if (e) fail_msg("compact after deleting every other session: %s (%s)", e8s_error_name(e),
                  e8s_last_error_detail());
  int again = 1;
  while (again < MAX_PUTS && (e = put_session(env, 5000 + again, nkeys[again])) == E8S_OK) again++;
  if (e != E8S_OK && e != E8S_ERR_NOSPC)
    fail_msg("put %d after the deletes: %s (%s)", again, e8s_error_name(e),
             e8s_last_error_detail());
  printf("every other session deleted: %d of %d; %d stored again before the disk was full\n",
         deleted, ok, again);
  if (again * 4 < deleted * 3)
    fail_msg("%d sessions deleted, only %d stored again: the dead half of the disk did not come "
             "back (%s)", deleted, again, e8s_last_error_detail());
  for (int pass = 0; pass < 2; pass++) {
    check_kept(env, keys, acked, n, 0);
    for (int j = 0; j < again; j++)
      assert_int_equal(tu_check(env, nkeys[j], (uint32_t)(5000 + j), CHUNK_BYTES), E8S_OK);
    if (!pass) tu_reopen(env);
  }
}

/* e8s_verify reads every live chunk (CRC): none is damaged, e.g. by a block given back under
 * it (store_punch.c). */
static void assert_verify_clean(tu_env *env) {
  e8s_verify_report rep;
  assert_int_equal(e8s_verify(env->st, &rep, NULL, NULL), E8S_OK);
  if (rep.newly_quarantined || rep.quarantined)
    fail_msg("verify: %llu of %llu chunks quarantined", (unsigned long long)rep.newly_quarantined,
             (unsigned long long)rep.chunks_checked);
  assert_true(rep.chunks_checked > 0);
}

/* Puts new sessions 5000 + j until the disk says NOSPC (any other error fails); how many were
 * stored, their keys in nkeys. */
static int put_until_full(tu_env *env, uint8_t (*nkeys)[32], int from) {
  int again = from, e;
  while (again < MAX_PUTS && (e = put_session(env, 5000 + again, nkeys[again])) == E8S_OK) again++;
  if (again < MAX_PUTS && e != E8S_ERR_NOSPC)
    fail_msg("put %d after the deletes: %s (%s)", again, e8s_error_name(e),
             e8s_last_error_detail());
  return again;
}

static void check_new(tu_env *env, uint8_t (*nkeys)[32], int n) {
  for (int j = 0; j < n; j++) {
    int e = tu_check(env, nkeys[j], (uint32_t)(5000 + j), CHUNK_BYTES);
    if (e) fail_msg("new session %d: %s (%s)", j, e8s_error_name(e), e8s_last_error_detail());
  }
}

/* Gap (a) of session 5: a store whose segments were written before the segment size was
 * bounded (1 MiB segments on the 4 MiB disk, use_big_segments) is filled, then every other
 * session is deleted. Every segment stays half live and none fits the lent index reserve for a
 * copy, so eviction alone empties no file and compaction cannot run. The store gives the dead
 * records' whole blocks back to the file system (hole punching), so the next put succeeds, a
 * Compact then has room and succeeds, and puts go on until most of the deleted bytes are used
 * again (a Compact on the disk full again may say NOSPC). Before: the put failed NOSPC ("the
 * index keeps its last ... bytes"), and so did every later one until almost everything was
 * deleted. Every kept session and every new one reads
 * back, also after a reopen. */
static void test_full_disk_big_segments_every_other_deleted_takes_puts(void **state) {
  space_env *s = *state;
  tu_env *env = &s->env;
  static uint8_t keys[MAX_PUTS][32], nkeys[MAX_PUTS][32];
  static int acked[MAX_PUTS];
  int n;
  int ok = fill_big(env, keys, acked, &n, 100);
  seg_sum sz = seg_files(env);
  if (sz.largest < (512u << 10))
    fail_msg("largest segment %llu bytes: the old 1 MiB geometry is not in force", sz.largest);
  int deleted = delete_every_other(env, acked, n);
  int e = put_session(env, 5000, nkeys[0]);
  if (e) fail_msg("put after deleting every other session (%d of %d) of 1 MiB segments: %s (%s)",
                  deleted, ok, e8s_error_name(e), e8s_last_error_detail());
  int again = put_until_full(env, nkeys, 1);
  /* full again: a Compact may find no room to copy a segment (NOSPC), nothing else */
  e8s_compact_report rep;
  e = e8s_compact(env->st, 0.1, &rep, NULL, NULL);
  printf("1 MiB segments, every other session deleted: %d of %d; %d stored again; then "
         "compact: %s, %llu segments\n", deleted, ok, again, e8s_error_name(e),
         (unsigned long long)rep.segments_compacted);
  if (e != E8S_OK && e != E8S_ERR_NOSPC)
    fail_msg("compact: %s (%s)", e8s_error_name(e), e8s_last_error_detail());
  if (again * 5 < deleted * 3) /* a dead record between live ones gives 3 of its 4 pages */
    fail_msg("%d sessions deleted, only %d stored again (%s)", deleted, again,
             e8s_last_error_detail());
  assert_verify_clean(env);
  for (int pass = 0; pass < 2; pass++) {
    check_kept(env, keys, acked, n, 0);
    check_new(env, nkeys, again);
    if (!pass) tu_reopen(env);
  }
}

/* Gap (b) of session 5: on a full disk, deleting much less than half a segment's worth. One
 * deleted session frees about one record: the put that follows succeeds, or fails
 * E8S_ERR_NOSPC saying "disk full", the bytes it needs and those free, and leaves nothing
 * visible. Then every eighth session deleted (every segment still 7/8 live, 128 KiB segments):
 * the puts that follow store at least 2/5 as many sessions again (measured 14-23 of 27-28:
 * compaction of the emptiest segments, then the dead records' whole blocks given back;
 * before: 5 of 27, the index reserve could not be refilled). Verify finds every chunk sound;
 * every kept session and every new one reads back, also after a reopen. */
static void test_full_disk_few_deleted_takes_puts(void **state) {
  space_env *s = *state;
  tu_env *env = &s->env;
  static uint8_t keys[MAX_PUTS][32], nkeys[MAX_PUTS][32], first[32];
  static int acked[MAX_PUTS];
  int n;
  int ok = fill(env, keys, acked, &n);
  assert_true(ok > 100);
  delete_session(env, 2, acked);
  int e = put_session(env, 4000, first);
  const char *d = e8s_last_error_detail();
  printf("one session deleted on the full disk: put %s (%s)\n", e8s_error_name(e), e ? d : "");
  if (e != E8S_OK && (e != E8S_ERR_NOSPC || !strstr(d, "disk full") || !strstr(d, "free")))
    fail_msg("put after one delete: %s (%s), want OK or NOSPC saying disk full and what is "
             "free", e8s_error_name(e), d);
  int first_ok = e == E8S_OK;
  int deleted = 1;
  for (int i = 3; i < n; i += 8) {
    if (!acked[i]) continue;
    delete_session(env, i, acked);
    deleted++;
  }
  int again = put_until_full(env, nkeys, 0);
  printf("every eighth session deleted: %d of %d; %d stored again (then: %s)\n", deleted, ok,
         again, e8s_last_error_detail());
  if (again * 5 < deleted * 2)
    fail_msg("%d sessions deleted (every eighth), only %d stored again (%s)", deleted, again,
             e8s_last_error_detail());
  assert_verify_clean(env);
  for (int pass = 0; pass < 2; pass++) {
    check_kept(env, keys, acked, n, 0);
    check_new(env, nkeys, again);
    e8s_chunk_info ci;
    if (!first_ok) /* the refused put left nothing visible */
      assert_int_equal(e8s_chunk_stat(env->st, env->ns, first, &ci), E8S_ERR_NOTFOUND);
    else
      assert_int_equal(tu_check(env, first, 4000, CHUNK_BYTES), E8S_OK);
    if (!pass) tu_reopen(env);
  }
}

typedef struct reader_arg {
  tu_env *env;
  uint8_t (*keys)[32];
  const int *acked;
  int n;
  _Atomic int stop;
  _Atomic int bad;        /* first bad outcome: an e8s code, or -100 (wrong bytes) */
  _Atomic long reads, gone;
} reader_arg;

/* Reads every chunk of the filled store over and over: a kept session's chunk must read back
 * byte-identical; a deleted session's chunk (a cache entry the puts evict, its blocks then
 * punched) reads back byte-identical or is NOTFOUND, never DATALOSS or other bytes. */
static void *reader_main(void *p) {
  reader_arg *a = p;
  while (!atomic_load(&a->stop)) {
    for (int i = 0; i < a->n && !atomic_load(&a->stop); i++) {
      if (!a->acked[i]) continue;
      int e = tu_check(a->env, a->keys[i], (uint32_t)i, CHUNK_BYTES);
      atomic_fetch_add(&a->reads, 1);
      if (e == E8S_ERR_NOTFOUND && a->acked[i] == DELETED) {
        atomic_fetch_add(&a->gone, 1);
        continue;
      }
      if (e != E8S_OK) {
        int zero = 0;
        atomic_compare_exchange_strong(&a->bad, &zero, e);
      }
    }
  }
  return NULL;
}

/* Two threads read every chunk while puts on the full disk of 1 MiB segments evict the deleted
 * sessions' chunks and punch their blocks (store_punch.c): no read ever sees a punched range
 * as its record (a reader holds its segment: no punch; a reader that looked before the
 * eviction looks again once it holds the segment), nothing is quarantined, verify is clean. */
static void test_full_disk_reads_while_punching(void **state) {
  space_env *s = *state;
  tu_env *env = &s->env;
  static uint8_t keys[MAX_PUTS][32], nkeys[MAX_PUTS][32];
  static int acked[MAX_PUTS];
  int n;
  fill_big(env, keys, acked, &n, 100);
  delete_every_other(env, acked, n);
  reader_arg a = {.env = env, .keys = keys, .acked = acked, .n = n};
  pthread_t th[2];
  for (int t = 0; t < 2; t++) assert_int_equal(pthread_create(&th[t], NULL, reader_main, &a), 0);
  int again = put_until_full(env, nkeys, 0);
  atomic_store(&a.stop, 1);
  for (int t = 0; t < 2; t++) pthread_join(th[t], NULL);
  printf("reads while punching: %ld reads, %ld of evicted chunks; %d stored again (then: %s)\n",
         (long)atomic_load(&a.reads), (long)atomic_load(&a.gone), again, e8s_last_error_detail());
  if (atomic_load(&a.bad))
    fail_msg("a read during the puts got %d (%s)", atomic_load(&a.bad),
             e8s_error_name(atomic_load(&a.bad)));
  /* no segment emptied or fit a copy (1 MiB segments, every other chunk live): what was
   * stored again came from punched blocks (how much varies: LMDB's file grows under the
   * readers' snapshots and takes from the same free space) */
  assert_true(again >= 1);
  seg_sum sz = seg_files(env);
  if (sz.blocks >= sz.size)
    fail_msg("segments hold %llu bytes of blocks for %llu bytes: nothing was punched",
             sz.blocks, sz.size);
  e8s_stats stt;
  assert_int_equal(e8s_stats_get(env->st, &stt), E8S_OK);
  assert_int_equal(stt.quarantined, 0);
  assert_verify_clean(env);
  check_kept(env, keys, acked, n, 0);
  check_new(env, nkeys, again);
}

typedef struct acked_msg { int i; uint8_t key[32]; } acked_msg;

/* Child of test_full_disk_kill_while_punching: opens the store, puts sessions from..from+199
 * until the disk says NOSPC, reporting each acknowledged one (put and session create
 * returned OK) over wfd. */
static void punch_child(tu_env *env, int from, int wfd) {
  if (e8s_open(&env->cfg, &env->st) != E8S_OK) _exit(2);
  for (int i = from; i < from + 200; i++) {
    acked_msg m = {.i = i};
    int e = put_session(env, i, m.key);
    if (e == E8S_ERR_NOSPC) break;
    if (e != E8S_OK) _exit(3);
    if (write(wfd, &m, sizeof m) != (ssize_t)sizeof m) _exit(4);
  }
  _exit(0);
}

/* kill -9 while puts on a full disk evict, compact and punch (1 MiB segments, every other
 * session deleted; then each round deletes the sessions the round before stored, so every
 * round's puts need the blocks of deleted records again): after each kill the store opens,
 * every acknowledged session (those kept from the fill and those the children stored) reads
 * back byte-identical, and verify finds nothing corrupt (no live record was punched, none
 * indexed past what was written). E8S_SPACE_KILLS rounds per io engine (default 12); each
 * child is killed after a random number (0..39) of acknowledged sessions, unless the disk was
 * full before. */
static void test_full_disk_kill_while_punching(void **state) {
  space_env *s = *state;
  tu_env *env = &s->env;
  static uint8_t keys[MAX_PUTS][32];
  static int acked[MAX_PUTS];
  static acked_msg got[200];
  int n;
  fill_big(env, keys, acked, &n, 100);
  delete_every_other(env, acked, n);
  const char *ks = getenv("E8S_SPACE_KILLS");
  int kills = ks && atoi(ks) > 0 ? atoi(ks) : 12, prev = 0, total = 0, killed = 0;
  unsigned seed = (unsigned)time(NULL);
  printf("kill while punching: seed %u\n", seed);
  srand(seed);
  for (int round = 0; round < kills; round++) {
    e8s_close(env->st);
    env->st = NULL;
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    int from = 10000 + round * 1000;
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
      close(fds[0]);
      punch_child(env, from, fds[1]);
    }
    close(fds[1]);
    /* the kill follows the k-th acknowledgement: it lands in one of the next puts (eviction,
     * compaction, hole punching, write, fdatasync, index commit), wherever it happens to be */
    int k = rand() % 40, ng = 0;
    if (k == 0) kill(pid, SIGKILL); /* during the open (recovery) or the first puts */
    while (ng < 200 && read(fds[0], &got[ng], sizeof got[ng]) == (ssize_t)sizeof got[ng]) {
      if (++ng == k) kill(pid, SIGKILL);
    }
    int ws;
    assert_int_equal(waitpid(pid, &ws, 0), pid);
    if (WIFEXITED(ws) && WEXITSTATUS(ws) != 0)
      fail_msg("round %d: child exited %d before the kill", round, WEXITSTATUS(ws));
    killed += WIFSIGNALED(ws);
    close(fds[0]);
    int e = e8s_open(&env->cfg, &env->st);
    if (e) fail_msg("round %d: open after the kill: %s (%s)", round, e8s_error_name(e),
                    e8s_last_error_detail());
    check_kept(env, keys, acked, n, 0);
    for (int j = 0; j < ng; j++) {
      e = tu_check(env, got[j].key, (uint32_t)got[j].i, CHUNK_BYTES);
      if (e) fail_msg("round %d: acknowledged session %d: %s (%s)", round, got[j].i,
                      e8s_error_name(e), e8s_last_error_detail());
    }
    assert_verify_clean(env);
    /* the sessions of the round before go: the next round needs their blocks */
    for (int i = prev; prev && i < prev + 200; i++) {
      char nm[32];
      name_of(nm, sizeof nm, i);
      e = e8s_session_delete(env->st, env->ns, nm);
      if (e != E8S_OK && e != E8S_ERR_NOTFOUND)
        fail_msg("delete %s: %s (%s)", nm, e8s_error_name(e), e8s_last_error_detail());
    }
    prev = from;
    total += ng;
  }
  printf("kill while punching: %d rounds, %d killed mid-run, %d acknowledged sessions checked\n",
         kills, killed, total);
  assert_true(total > 0);
  assert_true(killed * 4 >= kills); /* most children store more than 40 before NOSPC */
}

/* An index-heavy store: chunks of one token and IX_CHUNK_BYTES bytes, so the index (LMDB) grows
 * about as much per chunk as the segments do. Sessions of n chunks are put until the disk
 * refuses one, which must be refused by admission (not by a failed index commit, not with an
 * index reserve used up by the puts before); then sessions of n/10, ... 1 chunks until even one
 * chunk is refused. Then deleting every stored session must succeed on that full disk (a user
 * makes room by deleting), every acknowledged session reads back whole before its delete, and
 * a put after the deletes is admitted again. */
#define IX_CHUNK_BYTES 256u
#define IX_SEED_STRIDE 4096u
#define IX_MAX_SESSIONS 200

typedef struct ix_session { uint32_t n; uint8_t (*keys)[32]; } ix_session;

static int put_ix_session(tu_env *env, int i, ix_session *x) {
  uint32_t *toks = malloc(x->n * sizeof *toks);
  x->keys = malloc(x->n * 32);
  assert_true(toks && x->keys);
  tu_tokens(toks, x->n, 7000u + (uint32_t)i);
  int e = tu_put_chain(env, toks, x->n, 1, (uint32_t)i * IX_SEED_STRIDE, IX_CHUNK_BYTES, x->keys);
  free(toks);
  if (e) return e;
  char nm[32];
  snprintf(nm, sizeof nm, "ix%d", i);
  e8s_session_change chg = {.create = 1, .fp_id = env->fp,
                            .keys = (const uint8_t(*)[32])x->keys, .n_keys = x->n};
  return e8s_session_write(env->st, env->ns, nm, &chg);
}

static void check_ix_session(tu_env *env, int i, const ix_session *x) {
  char nm[32];
  snprintf(nm, sizeof nm, "ix%d", i);
  e8s_session_info si;
  int e = e8s_session_get(env->st, env->ns, nm, &si, NULL, 0, NULL, 0);
  if (e) fail_msg("session %s: %s (%s)", nm, e8s_error_name(e), e8s_last_error_detail());
  assert_int_equal(si.n_chunks, x->n);
  for (uint32_t c = 0; c < x->n; c++) {
    e = tu_check(env, x->keys[c], (uint32_t)i * IX_SEED_STRIDE + c, IX_CHUNK_BYTES);
    if (e) fail_msg("session %s chunk %u: %s (%s)", nm, c, e8s_error_name(e),
                    e8s_last_error_detail());
  }
}

static void index_heavy_delete(void **state, uint32_t chunks_per_session) {
  space_env *s = *state;
  tu_env *env = &s->env;
  static ix_session xs[IX_MAX_SESSIONS];
  static int acked[IX_MAX_SESSIONS];
  memset(acked, 0, sizeof acked);
  uint32_t n = chunks_per_session;
  int stored = 0, i;
  for (i = 0; i < IX_MAX_SESSIONS - 1; i++) {
    xs[i].n = n;
    int e = put_ix_session(env, i, &xs[i]);
    if (e == E8S_OK) {
      acked[i] = 1, stored++;
      continue;
    }
    if (e != E8S_ERR_NOSPC)
      fail_msg("session put %d on a full disk: %s (%s), want E8S_ERR_NOSPC", i,
               e8s_error_name(e), e8s_last_error_detail());
    const char *d = e8s_last_error_detail();
    /* refused by admission, before the index grew into its reserve (not a failed commit, not
     * a reserve that an admitted put's index pages had used up) */
    if (n == chunks_per_session && (strstr(d, "commit") || strstr(d, "keeps its last")))
      fail_msg("after %d sessions of %u chunks, the puts took the index reserve: %s", stored,
               n, d);
    if (n == 1) break;
    n = n / 10 ? n / 10 : 1;
  }
  if (i == IX_MAX_SESSIONS - 1) fail_msg("a 16 MiB disk took %d sessions", i);
  assert_true(stored >= 2);
  unsigned long long free_full = disk_free(env);
  fprintf(stderr, "index-heavy: %d sessions stored (first %u chunks), %llu bytes free\n", stored,
          chunks_per_session, free_full);
  /* every acknowledged session reads back, then its delete commits on the full disk */
  for (int k = 0; k < i; k++) {
    if (!acked[k]) continue;
    check_ix_session(env, k, &xs[k]);
    char nm[32];
    snprintf(nm, sizeof nm, "ix%d", k);
    int e = e8s_session_delete(env->st, env->ns, nm);
    if (e) fail_msg("delete %s (%u chunks) on a full disk (%llu bytes free): %s (%s)", nm,
                    xs[k].n, free_full, e8s_error_name(e), e8s_last_error_detail());
  }
  /* the deletes made room: a new session of half the first size is admitted again (the
   * index file keeps its size: admission counts new index pages as if none were free in it) */
  ix_session *last = &xs[IX_MAX_SESSIONS - 1];
  last->n = chunks_per_session / 2;
  int e = put_ix_session(env, IX_MAX_SESSIONS - 1, last);
  if (e) fail_msg("put after deleting every session: %s (%s)", e8s_error_name(e),
                  e8s_last_error_detail());
  check_ix_session(env, IX_MAX_SESSIONS - 1, last);
  assert_verify_clean(env);
  for (int k = 0; k < IX_MAX_SESSIONS; k++) free(xs[k].keys), xs[k].keys = NULL;
}

/* sessions of 1500 chunks: each delete fits one transaction of the reserve */
static void test_full_disk_index_heavy_delete(void **state) { index_heavy_delete(state, 1500); }

/* sessions of 3000 chunks: one transaction of the delete would need more than the reserve */
static void test_full_disk_index_heavy_delete_big(void **state) {
  index_heavy_delete(state, 3000);
}

/* Child: opens a new store in dir; exit 0 if it failed E8S_ERR_NOSPC naming dir, else 3. */
static void open_new_child(const char *dir) {
  tu_env env;
  memset(&env, 0, sizeof env);
  snprintf(env.dir, sizeof env.dir, "%.200s", dir);
  tu_config(&env);
  int e = e8s_open(&env.cfg, &env.st);
  const char *d = e8s_last_error_detail();
  fprintf(stderr, "open on a full disk: %s (%s)\n", e8s_error_name(e), d ? d : "");
  if (e == E8S_OK) e8s_close(env.st);
  _exit(e == E8S_ERR_NOSPC && d && strstr(d, dir) && strstr(d, "disk full") ? 0 : 3);
}

static void test_full_disk_open_new(void **state) {
  (void)state;
  char mnt[200], path[300];
  tu_mkdtemp(mnt, sizeof mnt);
  if (mount("tmpfs", mnt, "tmpfs", 0, "size=1m") != 0) fail_msg("mount tmpfs: %s", strerror(errno));
  snprintf(path, sizeof path, "%s/junk", mnt);
  int fd = open(path, O_WRONLY | O_CREAT, 0644);
  assert_true(fd >= 0);
  static char buf[64 << 10];
  while (write(fd, buf, sizeof buf) > 0) {}
  close(fd);
  snprintf(path, sizeof path, "%s/data", mnt);
  fflush(NULL);
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) open_new_child(path);
  int ws = 0;
  assert_int_equal(waitpid(pid, &ws, 0), pid);
  umount2(mnt, MNT_DETACH);
  rmdir(mnt);
  if (WIFSIGNALED(ws)) fail_msg("open of a new store on a full disk died of signal %d", WTERMSIG(ws));
  assert_int_equal(WEXITSTATUS(ws), 0);
}

/* Blocks of LMDB's lock file cover its size (no page of it left sparse). */
static void assert_lock_allocated(const char *dir) {
  char p[300];
  snprintf(p, sizeof p, "%s/index/lock.mdb", dir);
  struct stat sb;
  assert_int_equal(stat(p, &sb), 0);
  assert_true(sb.st_size > 0);
  if ((uint64_t)sb.st_blocks * 512 < (uint64_t)sb.st_size)
    fail_msg("lock.mdb: %lld bytes, %lld allocated", (long long)sb.st_size,
             (long long)sb.st_blocks * 512);
}

static void test_lock_file_allocated(void **state) {
  space_env *s = *state;
  tu_env *env = &s->env;
  assert_lock_allocated(env->dir);
  /* a sparse lock file left by an older version is allocated at the next open */
  e8s_close(env->st);
  env->st = NULL;
  char p[300];
  snprintf(p, sizeof p, "%s/index/lock.mdb", env->dir);
  struct stat sb;
  assert_int_equal(stat(p, &sb), 0);
  assert_int_equal(unlink(p), 0);
  int fd = open(p, O_RDWR | O_CREAT, 0644);
  assert_true(fd >= 0);
  assert_int_equal(ftruncate(fd, sb.st_size), 0);
  close(fd);
  assert_int_equal(e8s_open(&env->cfg, &env->st), E8S_OK);
  assert_lock_allocated(env->dir);
}

int main(void) {
  if (private_mounts() != 0) {
    fprintf(stderr, "test_store_space: cannot make a private mount namespace for a tmpfs "
            "(unshare: %s); this test needs root or unprivileged user namespaces\n",
            strerror(errno));
    return 1;
  }
  if (getenv("E8_TEST_FILTER")) cmocka_set_test_filter(getenv("E8_TEST_FILTER")); /* one test */
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_full_disk_delete_frees, setup, teardown),
      cmocka_unit_test_setup_teardown(test_full_disk_reopen_then_delete, setup, teardown),
      cmocka_unit_test_setup_teardown(test_full_disk_failed_compact_leaves_nothing, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_full_disk_put_compacts_mostly_dead_segment, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_full_disk_every_other_deleted_takes_puts, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_full_disk_big_segments_every_other_deleted_takes_puts,
                                      setup, teardown),
      cmocka_unit_test_setup_teardown(test_full_disk_few_deleted_takes_puts, setup, teardown),
      cmocka_unit_test_setup_teardown(test_full_disk_reads_while_punching, setup, teardown),
      cmocka_unit_test_setup_teardown(test_full_disk_kill_while_punching, setup, teardown),
      cmocka_unit_test(test_full_disk_open_new),
      cmocka_unit_test_setup_teardown(test_full_disk_index_heavy_delete, setup_16m, teardown),
      cmocka_unit_test_setup_teardown(test_full_disk_index_heavy_delete_big, setup_16m,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_lock_file_allocated, setup, teardown),
  };
  return TU_RUN_BOTH("store_space", tests);
}
