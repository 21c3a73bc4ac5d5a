/* e8store_test.h: test-only fault injection for libe8store. Not part of the public API: tests
 * include it to make the io engines and the index fail on purpose, one fault kind at a time.
 *
 * The setting is process-wide (atomics), so set it only while no other thread of the process
 * uses a store. After `skip` matching operations pass untouched, the next `count` fail.
 * Matching operations: WRITE_* = one record write submission (either engine), FSYNC_EIO = one
 * fdatasync of a segment, MAP_FULL = one LMDB write-transaction commit (acts as MDB_MAP_FULL:
 * the store grows the map and retries), URING_EPERM = one io_uring setup (open falls back to
 * pwrite with E8S_IO_AUTO, fails with E8S_IO_URING), INDEX_LOST / CRASH_AFTER_SYNC = one put
 * group's index stage. */
#ifndef E8STORE_TEST_H
#define E8STORE_TEST_H

typedef enum e8s_fault {
  E8S_FAULT_NONE = 0,
  E8S_FAULT_WRITE_EIO,
  E8S_FAULT_WRITE_ENOSPC,
  E8S_FAULT_WRITE_SHORT,  /* the write is submitted with half its length: the engine must
                             continue it, so the record still succeeds */
  E8S_FAULT_FSYNC_EIO,
  E8S_FAULT_MAP_FULL,
  E8S_FAULT_URING_EPERM,
  E8S_FAULT_INDEX_LOST,       /* a put group's LMDB transaction is aborted instead of committed
                                 and the put reports success: what a power loss does to the
                                 last lazy (MDB_NOMETASYNC) commit; replay at the next open
                                 must bring its records back */
  E8S_FAULT_CRASH_AFTER_SYNC, /* the process SIGKILLs itself after a put group's segment
                                 fdatasync, before its LMDB stage */
  E8S_FAULT_CRASH_IN_DELETE   /* the process SIGKILLs itself after a transaction of a session
                                 delete in steps (store_session.c: the move of the chain into
                                 pending pieces, or a step dropping refs); the next open must
                                 finish it */
} e8s_fault;

void e8s_test_fault_set(e8s_fault kind, unsigned skip, unsigned count);
/* New segments start their first record at this byte offset instead of 64 (the gap is a
 * sparse hole), so tests reach offsets past 4 GiB without writing 4 GiB. 0 = normal. */
void e8s_test_segment_start(unsigned long long offset);

/* on = 1: stores opened from now on use e8s_config.segment_bytes as given, not bounded by the
 * index reserve (store_space.c): the geometry of a store whose segments were written before
 * that bound or on a larger file system (segments too big to compact on a full disk). */
void e8s_test_uncapped_segments(int on);

/* on = 1: the store acts as on a file system without hole punching (FALLOC_FL_PUNCH_HOLE
 * refused): dead records give their disk back only when their segment is emptied or
 * compacted (store_punch.c). */
void e8s_test_no_punch(int on);

/* Faults injected since the last e8s_test_fault_set. */
unsigned e8s_test_fault_hits(void);

/* Where e8s_put's time went since open (sums over calls/groups, CLOCK_MONOTONIC ns), for
 * benchmarks: prep = argument checks, token digests and payload CRC32C (in the callers'
 * threads); write = data stage (waiting for the data stage, space, writes, writeback start);
 * sync = fdatasync stage (excluding the wait for its turn); index = LMDB stage (waiting for the
 * writer mutex, plan, insert, commit). groups = groups led (data stages), group_calls = calls
 * in them, index_commits = LMDB transactions of the index stage (groups waiting for it are
 * merged into one), syncs = sync stages that called fdatasync, syncs_covered = sync stages
 * that did not need to (an fdatasync of their segment that began after their writes had
 * succeeded: store_wpipe.c). */
typedef struct e8s_test_put_times {
  unsigned long long prep_ns, write_ns, sync_ns, index_ns, groups, group_calls, index_commits,
      syncs, syncs_covered;
} e8s_test_put_times;
struct e8s_store;
void e8s_test_put_times_get(struct e8s_store *st, e8s_test_put_times *out);

/* Records that replay indexed when the store was opened (store_replay.c). */
unsigned long long e8s_test_replayed_at_open(struct e8s_store *st);

#endif
