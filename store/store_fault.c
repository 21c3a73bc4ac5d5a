/* store_fault.c: fault injection hooks (see e8store_test.h). One relaxed atomic load per
 * operation when no fault is set. */
#include <errno.h>
#include <signal.h>
#include <stdatomic.h>

#include "store/e8store_test.h"
#include "store/store_int.h"

static _Atomic int f_kind;
static _Atomic unsigned f_skip, f_count, f_hits;

void e8s_test_fault_set(e8s_fault kind, unsigned skip, unsigned count) {
  atomic_store(&f_kind, E8S_FAULT_NONE);
  atomic_store(&f_skip, skip);
  atomic_store(&f_count, count);
  atomic_store(&f_hits, 0);
  atomic_store(&f_kind, (int)kind);
}

unsigned e8s_test_fault_hits(void) { return atomic_load(&f_hits); }

/* 1 if an operation of one of the kinds [a, b] must fail now; *which = the kind. */
static int fire(int a, int b, int *which) {
  int k = atomic_load_explicit(&f_kind, memory_order_relaxed);
  if (k == E8S_FAULT_NONE || k < a || k > b) return 0;
  unsigned s = atomic_load(&f_skip);
  while (s > 0) {
    if (atomic_compare_exchange_weak(&f_skip, &s, s - 1)) return 0;
  }
  unsigned c = atomic_load(&f_count);
  while (c > 0) {
    if (atomic_compare_exchange_weak(&f_count, &c, c - 1)) {
      atomic_fetch_add(&f_hits, 1);
      *which = k;
      return 1;
    }
  }
  return 0;
}

int store_fault_write(uint64_t *len) {
  int k;
  if (!fire(E8S_FAULT_WRITE_EIO, E8S_FAULT_WRITE_SHORT, &k)) return 0;
  if (k == E8S_FAULT_WRITE_EIO) return -EIO;
  if (k == E8S_FAULT_WRITE_ENOSPC) return -ENOSPC;
  *len = *len > 1 ? *len / 2 : *len;
  return 0;
}

int store_fault_fsync(void) {
  int k;
  return fire(E8S_FAULT_FSYNC_EIO, E8S_FAULT_FSYNC_EIO, &k) ? -EIO : 0;
}

int store_fault_map_full(void) {
  int k;
  return fire(E8S_FAULT_MAP_FULL, E8S_FAULT_MAP_FULL, &k);
}

int store_fault_uring_setup(void) {
  int k;
  return fire(E8S_FAULT_URING_EPERM, E8S_FAULT_URING_EPERM, &k) ? -EPERM : 0;
}

int store_fault_index_lost(void) {
  int k;
  return fire(E8S_FAULT_INDEX_LOST, E8S_FAULT_INDEX_LOST, &k);
}

void store_fault_crash_after_sync(void) {
  int k;
  if (fire(E8S_FAULT_CRASH_AFTER_SYNC, E8S_FAULT_CRASH_AFTER_SYNC, &k)) raise(SIGKILL);
}

void store_fault_crash_in_delete(void) {
  int k;
  if (fire(E8S_FAULT_CRASH_IN_DELETE, E8S_FAULT_CRASH_IN_DELETE, &k)) raise(SIGKILL);
}

static _Atomic unsigned long long seg_start;

void e8s_test_segment_start(unsigned long long offset) { atomic_store(&seg_start, offset); }

uint64_t store_fault_segment_start(void) {
  unsigned long long o = atomic_load(&seg_start);
  return o > STORE_SEG_HDR_BYTES ? o : STORE_SEG_HDR_BYTES;
}

static _Atomic int uncapped;

void e8s_test_uncapped_segments(int on) { atomic_store(&uncapped, on); }

int store_fault_uncapped_segments(void) { return atomic_load(&uncapped); }

static _Atomic int no_punch;

void e8s_test_no_punch(int on) { atomic_store(&no_punch, on); }

int store_fault_no_punch(void) { return atomic_load(&no_punch); }

unsigned long long e8s_test_replayed_at_open(struct e8s_store *st) {
  return st->replayed_at_open;
}

void e8s_test_put_times_get(struct e8s_store *st, e8s_test_put_times *out) {
  out->prep_ns = atomic_load(&st->t_prep_ns);
  out->write_ns = atomic_load(&st->t_write_ns);
  out->sync_ns = atomic_load(&st->t_sync_ns);
  out->index_ns = atomic_load(&st->t_index_ns);
  out->groups = atomic_load(&st->n_groups);
  out->group_calls = atomic_load(&st->n_group_calls);
  out->index_commits = atomic_load(&st->n_index_commits);
  out->syncs = atomic_load(&st->n_syncs);
  out->syncs_covered = atomic_load(&st->n_syncs_covered);
}
