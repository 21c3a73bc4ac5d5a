/* store_int.h: internals of libe8store shared by its .c files (not installed, not for users).
 *
 * Layout of the handle, the on-disk record and segment headers, the LMDB value layouts, and the
 * internal function groups: errors (store_err.c), keys and CRC (store_key.c), io engines
 * (store_io_*.c), segment table (store_seg.c), LMDB index (store_index.c), pins and leases
 * (store_pin.c), eviction (store_evict.c), put (store_put.c), reads (store_read.c), sessions
 * (store_session.c), namespaces and fingerprints (store_ns.c), compaction, verify, quarantine
 * (store_compact.c, store_verify.c), open/close/recovery (store_open.c), full disk
 * (store_space.c).
 */
#ifndef STORE_INT_H
#define STORE_INT_H

#include <lmdb.h>
#include <pthread.h>
#include <stddef.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/uio.h>

#include "store/e8store.h"

/* ---------------------------------------------------------------- on-disk headers */
#define STORE_REC_MAGIC 0x52533845u /* "E8SR" little-endian */
#define STORE_SEG_MAGIC 0x47533845u /* "E8SG" */
#define STORE_HDR_VERSION 2u /* record header version (1: 64 bytes, before the replay log) */
#define STORE_SEG_HDR_BYTES 64u
#define STORE_PAYLOAD_MAX (1ull << 40)
#define STORE_FORMAT 2u /* meta "format": stores of format 1 hold v1 records, refused at open */

struct store_chunk_val;
/* Record header, 192 bytes (E8S_RECORD_HEADER_BYTES), little-endian fields, written before each
 * payload. It holds everything the index keeps about the chunk, so the segments are a log the
 * index can be rebuilt from (replay at open, store_replay.c):
 *   0 magic u32 | 4 version u8 (2) | 5 0 | 6 header bytes u8 (192) | 7 0 | 8 payload bytes u64
 *   16 key[32] | 48 payload CRC32C u32 | 52 n_tokens u32 | 56 ns_id u32
 *   60 CRC32C of bytes 0..59 u32 | 64 fingerprint id[32] | 96 parent key[32]
 *   128 token digest[32] | 160 raw bytes u64 | 168 created ns u64 | 176 zero[12]
 *   188 CRC32C of bytes 64..187 u32
 * Encode takes payload_bytes, crc, n_tokens, ns_id, fp, parent, digest, raw_bytes, created_ns
 * of v; decode fills those (the rest of v zeroed). */
void store_rec_hdr_encode(uint8_t out[E8S_RECORD_HEADER_BYTES], const uint8_t key[32],
                          const struct store_chunk_val *v);
/* 0 if valid (magic, version, both header CRCs), -1 otherwise. */
int store_rec_hdr_decode(const uint8_t in[E8S_RECORD_HEADER_BYTES], uint8_t key[32],
                         struct store_chunk_val *v);

/* ---------------------------------------------------------------- errors */
/* Sets the thread's detail message (printf-style) and returns rc. */
int store_err(int rc, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int store_err_errno(int neg_errno); /* -EIO -> E8S_ERR_IO, -ENOSPC -> E8S_ERR_NOSPC, ... */
int store_err_mdb(int mdb_rc, const char *what); /* MDB_* -> e8s_err with detail */
#define STORE_MAPFULL_RETRY 1000 /* internal: an LMDB call said MDB_MAP_FULL; grow and retry */

/* ---------------------------------------------------------------- keys, CRC, time */
uint32_t store_crc32c(const void *buf, uint64_t len); /* CRC32C, init ~0, final ~ */
uint32_t store_crc32c_update(uint32_t crc_state, const void *buf, uint64_t len); /* raw state */
uint64_t store_now_ns(void);   /* CLOCK_REALTIME */
uint64_t store_mono_ms(void);  /* CLOCK_MONOTONIC */
int store_key_is_zero(const uint8_t k[32]);

/* ---------------------------------------------------------------- fault injection */
/* Kinds match e8store_test.h. Each returns 0 (no fault) or the injected value. */
int store_fault_write(uint64_t *len); /* -EIO, -ENOSPC, or shortens *len (returns 0) */
int store_fault_fsync(void);          /* -EIO */
int store_fault_map_full(void);       /* 1 if the commit must act as MDB_MAP_FULL */
int store_fault_uring_setup(void);    /* -EPERM */
int store_fault_index_lost(void);     /* 1: the put's commit is dropped but reported done */
void store_fault_crash_after_sync(void); /* SIGKILLs the process if that fault is due */
void store_fault_crash_in_delete(void);  /* SIGKILLs the process if that fault is due */
uint64_t store_fault_segment_start(void); /* first record offset of a new segment */
int store_fault_uncapped_segments(void);  /* 1: segment_bytes is not bounded at open */
int store_fault_no_punch(void);           /* 1: act as a file system without hole punching */

/* ---------------------------------------------------------------- io engines */
typedef struct store_iow {
  int fd;
  uint64_t off;          /* file offset, bytes */
  struct iovec iov[2];   /* header, payload */
  int niov;
  uint64_t len;          /* sum of iov lengths */
  uint64_t done;         /* bytes written so far (engine internal) */
  struct iovec cur[2];   /* engine internal: the iovecs of the submission in flight */
  int res;               /* out: 0 or -errno */
  int kick;              /* in: start writeback of the record once written (a hint: the
                            engine may skip it; durability comes from the fdatasync) */
} store_iow;

typedef struct store_io store_io;
typedef struct store_io_ops {
  const char *name;
  /* Writes every w[i] completely at its offset (short writes are continued), sets w[i].res. */
  void (*write_batch)(store_io *io, store_iow *w, size_t n);
  /* fdatasync(fd) on every fd in fds[0..n); res[i] = 0 or -errno. */
  void (*sync_batch)(store_io *io, const int *fds, int *res, size_t n);
  void (*destroy)(store_io *io);
} store_io_ops;

struct store_io {
  const store_io_ops *ops;
  e8s_io_engine kind;
};

/* Fills out[] with w->iov advanced past w->done bytes; returns the iovec count. */
int store_iov_skip(const store_iow *w, struct iovec out[2]);
/* -errno on failure: -EPERM/-ENOSYS mean "refused, use pwrite". */
int store_io_uring_create(unsigned entries, store_io **out);
/* A second ring for the sync stage of the write pipeline (no setup fault hook). */
int store_io_uring_create_sync(unsigned entries, store_io **out);
int store_io_pwrite_create(store_io **out);
/* A complete write for a single buffer at off with pwrite, continuing short writes. */
int store_pwrite_all(int fd, const void *buf, uint64_t len, uint64_t off);
int store_pread_all(int fd, void *buf, uint64_t len, uint64_t off); /* -errno, or 1 on EOF */
int store_preadv_all(int fd, struct iovec *iov, int niov, uint64_t off); /* niov <= 2 */

/* ---------------------------------------------------------------- LMDB values */
typedef struct store_chunk_val {     /* db "chunks": key[32] -> this */
  uint64_t seg_id, offset, payload_bytes, created_ns, tick;
  uint32_t crc, n_tokens, ns_id, refs;
  uint8_t fp[32], parent[32], digest[32];
  uint64_t raw_bytes;  /* e8s_put_rec.raw_bytes; absent (0) in values of older stores */
} store_chunk_val;
#define STORE_CHUNK_VAL_V1 (sizeof(store_chunk_val) - 8) /* value size before raw_bytes */

typedef struct store_seg_val {       /* db "segs": seg id (be64) -> this */
  uint64_t end;        /* bytes of the file covered by the index (truncate point at open) */
  uint64_t live;       /* live record bytes */
  uint64_t created_ns;
} store_seg_val;

typedef struct store_ns_val {        /* db "ns": ns id (be32) -> this; "nsname": name -> id */
  uint8_t salt[32];
  uint64_t quota, used, chunks, created_ns;
  char name[E8S_NAME_MAX + 1];
  uint64_t tokens, raw_bytes; /* sums over its live chunks; absent in older stores (see open) */
} store_ns_val;
#define STORE_NS_VAL_V1 offsetof(store_ns_val, tokens) /* value size before tokens, raw_bytes */

typedef struct store_sess_hdr {      /* db "sessions": ns id (be32) + name -> hdr, meta, keys */
  uint8_t fp[32];
  uint64_t n_tokens, n_chunks, meta_bytes, created_ns, updated_ns;
} store_sess_hdr;

typedef struct store_quar_val {      /* db "quar": key -> this */
  store_chunk_val rec;
  uint32_t found_crc, pad;
  uint64_t when_ns;
} store_quar_val;

/* ---------------------------------------------------------------- segments */
typedef struct store_seg {
  uint64_t id;
  int fd;              /* O_RDONLY for old segments, O_RDWR for the one being written */
  int refs;            /* readers inside a read, and pending records (under seg_mu) */
  int retired;         /* removed from the index: unlink when refs reaches 0 */
  int pending;         /* records written by the pipeline, not yet indexed or given up */
  int sync_failed;     /* an fdatasync of this file failed: sealed, nothing more indexed */
  struct store_seg *next;
} store_seg;

/* ---------------------------------------------------------------- pins */
typedef struct store_pin {
  uint8_t key[32];
  uint32_t readers;    /* open e8s_chunk handles */
  uint32_t leases;     /* unexpired lookup leases */
  uint64_t lease_until_ms;
  struct store_pin *next;
} store_pin;

typedef struct store_lease {
  uint64_t id, until_ms;
  uint32_t ns_id;
  size_t n;
  uint8_t (*keys)[32];
  struct store_lease *next;
} store_lease;

typedef struct store_lease_ns {     /* leased chunks of one namespace (pin_mu) */
  uint32_t ns_id;
  uint64_t chunks;
  struct store_lease_ns *next;
} store_lease_ns;

#define STORE_PIN_BUCKETS 1024
#define STORE_TOUCH_MAX 65536

typedef struct store_touch_ent { uint8_t key[32]; uint64_t tick; } store_touch_ent;

/* ---------------------------------------------------------------- write lanes */
/* A lane is one active segment with its own data and sync stages (store_wpipe.c): two lanes
 * let two groups' fdatasyncs run at once, on two files, each file's fdatasyncs still one at a
 * time (so a writeback error is always seen by the sync stage of the records it hit). */
#define STORE_LANES 2
typedef struct store_lane {
  pthread_mutex_t dlock;     /* data stage: io engine, space in wseg, tickets */
  store_seg *wseg;           /* segment being appended (NULL until the first write); the
                                pointer changes under dlock + seg_mu */
  uint64_t wpos;             /* next write offset in wseg (dlock) */
  uint64_t wprealloc;        /* wseg is allocated (fallocate) up to here (dlock) */
  int wpre_off;              /* a preallocation failed in this data stage: none more in it,
                                in any segment (store_seg.c prealloc; dlock) */
  uint64_t wfirst;           /* offset of wseg's first record (dlock) */
  uint64_t next_ticket;      /* dlock: order of data batches */
  pthread_mutex_t sync_mu;   /* sync stage: one batch's fdatasyncs at a time, in ticket order */
  pthread_cond_t sync_cv;
  uint64_t serving;          /* sync_mu: ticket whose fdatasyncs run now */
  store_io *io, *sio;        /* data stage's and sync stage's io engines (same kind) */
  int led;                   /* gc_mu: a put group's data stage holds the lane */
  _Atomic uint64_t written;  /* every ticket below this one has its writes complete (dlock
                                writes it after taking a ticket; the sync stage reads it) */
  uint64_t cov_seg, cov_upto; /* sync_mu: an fdatasync of segment cov_seg that succeeded began
                                after the writes of every ticket below cov_upto completed */
  _Atomic uint64_t ahead;    /* wprealloc - wpos: allocated room left in wseg (dlock writes;
                                read without it by store_space_admit) */
} store_lane;

/* ---------------------------------------------------------------- the handle */
struct e8s_store {
  e8s_config cfg;
  char *dir, *segdir;
  int readonly;
  int lockfd, segdirfd;

  MDB_env *env;
  MDB_dbi db_chunks, db_lru, db_nslru, db_sess, db_ns, db_nsname, db_fp, db_segs, db_quar,
      db_meta;
  pthread_rwlock_t map_lock; /* readers: rd around a read txn; map growth: wr */
  uint64_t map_bytes;

  pthread_mutex_t wlock;     /* the one LMDB writer: write transactions */
  store_lane lanes[STORE_LANES]; /* write pipeline lanes (store_wpipe.c); lanes[0].io is the
                                    engine reported by e8s_io_engine_used */
  uint64_t next_seg_id;      /* seg_mu */
  _Atomic uint64_t t_prep_ns, t_write_ns, t_sync_ns, t_index_ns, n_groups, n_group_calls,
      n_index_commits, n_syncs, n_syncs_covered;

  pthread_mutex_t gc_mu;     /* group commit queue of e8s_put calls (store_put.c) */
  pthread_cond_t gc_cv;
  struct put_ctx *gc_head, *gc_tail;
  struct put_group *ix_head, *ix_tail; /* gc_mu: synced groups waiting for the index stage */
  int ix_busy;               /* gc_mu: a thread runs the index stage */
  int n_syncing;             /* gc_mu: put groups written, not yet in the index queue */
  uint64_t commit_ns;        /* gc_mu: running mean of an index stage's duration, ns */
  _Atomic uint64_t n_lingers; /* index stages that waited for a syncing group (and shared) */

  pthread_mutex_t seg_mu;    /* the segment table */
  store_seg *segs;

  pthread_mutex_t pin_mu;    /* pins, leases, touches */
  store_pin *pins[STORE_PIN_BUCKETS];
  store_lease *leases, *leases_tail;
  uint64_t next_lease_id;
  uint64_t lease_chunks;     /* pin_mu: chunks held by unexpired leases (cap: lease_max_chunks) */
  store_lease_ns *lease_ns;  /* pin_mu: the same per namespace (cap: lease_ns_max_chunks) */
  _Atomic uint64_t c_lease_dropped; /* leases ended early by the caps */
  store_touch_ent *touches;
  size_t n_touches;

  int ix_fd;                 /* LMDB data file (-1 until store_space_open) */
  uint64_t ix_psize;         /* LMDB page size, bytes */
  _Atomic uint64_t ix_reserve; /* index reserve in force, bytes (store_space.c) */
  uint64_t ix_reserve_max;   /* what it becomes once a segment reaches half of it, bytes */
  uint64_t seg_bytes;        /* segment size in use, bytes: cfg.segment_bytes bounded by the
                                index reserve (store_space_sizes) */
  _Atomic uint64_t ix_alloc_end; /* the data file is allocated up to here, bytes */
  _Atomic int ix_short;      /* the reserve could not be refilled: the disk is full */
  _Atomic int ix_lent;       /* a compaction borrows the reserve (store_space_lend) */
  _Atomic int punch_off;     /* the file system refused hole punching (store_punch.c) */
  _Atomic uint64_t dead_gen;  /* bumped when a record may have become dead or its segment
                                 punchable (chunk removed or moved, segment sealed or done) */
  _Atomic uint64_t punched_gen; /* dead_gen of the last punch pass that missed nothing */
  _Atomic uint64_t n_punches;   /* segments punched (bumped under seg_mu before it): a reader
                                   that saw it unchanged across its look-up and its segment
                                   acquire needs no second look (store_read.c) */

  _Atomic uint64_t tick;     /* logical LRU clock */
  uint64_t replayed_at_open; /* records indexed by replay at open (store_replay.c) */
  _Atomic uint64_t c_lookups, c_hit_chunks, c_misses, c_evictions, c_stored, c_existed,
      c_reads, c_read_bytes, c_crc_failures;
};

/* ---------------------------------------------------------------- index (store_index.c) */
#define STORE_MAXREADERS 1024 /* LMDB reader slots (sizes the lock file) */
int store_index_open(e8s_store *st);
void store_index_close(e8s_store *st);
/* Read transaction with the map read-lock held; end with store_rtxn_end. */
int store_rtxn_begin(e8s_store *st, MDB_txn **txn);
void store_rtxn_end(e8s_store *st, MDB_txn *txn);
/* Runs fn inside a write transaction under wlock, growing the map and retrying on map full.
 * fn returns E8S_OK to commit, an error to abort, or STORE_MAPFULL_RETRY. */
typedef int (*store_wtxn_fn)(e8s_store *st, MDB_txn *txn, void *ctx);
int store_wtxn_run(e8s_store *st, store_wtxn_fn fn, void *ctx);
/* store_wtxn_run without the pending LRU touches (reads' ticks, up to STORE_TOUCH_MAX chunk
 * updates that the next transaction applies): for session deletes, whose transaction must fit
 * in the index reserve on a full disk; the touches stay for the next write. */
int store_wtxn_run_untouched(e8s_store *st, store_wtxn_fn fn, void *ctx);
/* Read-write open: fills tokens/raw_bytes of namespaces stored before they existed. */
int store_ns_upgrade(e8s_store *st);
/* The same, with wlock already held by the caller. */
int store_wtxn_run_locked(e8s_store *st, store_wtxn_fn fn, void *ctx);
/* Commit with map-full handling: E8S_OK, STORE_MAPFULL_RETRY (aborted), or error (aborted). */
int store_txn_commit(e8s_store *st, MDB_txn *txn);
/* Commit of a put group's transaction (wlock held). lazy: with MDB_NOMETASYNC, i.e. LMDB's
 * data pages are flushed but its meta page is written without a flush, so the commit is
 * visible and consistent at once and durable at the next flush of the index (any later commit,
 * store_index_sync, close). LMDB keeps its integrity that way; a power loss can undo that last
 * commit, and replay at open (store_replay.c) indexes its records again from their segments,
 * whose fdatasync came before the commit. Every other transaction flushes data and meta. */
int store_index_commit_lazy(e8s_store *st, MDB_txn *txn, int lazy);
int store_index_sync(e8s_store *st); /* flushes data and meta of every commit so far */
/* Doubles the map (wlock held, no write txn open). E8S_ERR_MAPFULL at the maximum. */
int store_map_grow(e8s_store *st);
/* mdb_put / mdb_del with error mapping (MDB_MAP_FULL -> STORE_MAPFULL_RETRY). */
int store_put(MDB_txn *txn, MDB_dbi dbi, const void *k, size_t kl, const void *v, size_t vl);
int store_del(MDB_txn *txn, MDB_dbi dbi, const void *k, size_t kl); /* NOTFOUND is OK */
/* mdb_get into a fixed struct: E8S_OK, E8S_ERR_NOTFOUND, E8S_ERR_CORRUPT (size). */
int store_get_fixed(MDB_txn *txn, MDB_dbi dbi, const void *k, size_t kl, void *v, size_t vl);
/* As store_get_fixed, but a value of old_vl bytes (an older layout that is a prefix of this
 * one) is accepted too, the rest of v zeroed. */
int store_get_grown(MDB_txn *txn, MDB_dbi dbi, const void *k, size_t kl, void *v, size_t vl,
                    size_t old_vl);
int store_meta_get_u64(MDB_txn *txn, e8s_store *st, const char *name, uint64_t *v);
int store_meta_put_u64(MDB_txn *txn, e8s_store *st, const char *name, uint64_t v);
void store_be32(uint8_t out[4], uint32_t v);
void store_be64(uint8_t out[8], uint64_t v);
uint64_t store_rd_be64(const uint8_t in[8]);

/* ---------------------------------------------------------------- write pipeline (store_wpipe.c)
 * A batch of records goes through three stages: data (store_wp_write, under dlock: space in
 * the active segment, writes through the io engine, writeback started), sync (store_wp_sync:
 * fdatasync of every segment touched, one batch at a time in the order of the data stage) and
 * index (the caller's LMDB transaction under wlock). Different batches can be in different
 * stages at once (puts of batch n+1 are written while batch n is fsynced and committed).
 * Failure rule: a failed fdatasync marks its segment sync_failed (sealed at the next reserve);
 * every record of that segment whose sync stage comes at or after the failure fails too, so
 * nothing written after the last good fdatasync of a segment is ever indexed. A record holds
 * its segment (pending) from reserve to store_wp_release: the segment is not removed from the
 * index, compacted or dropped meanwhile. */
typedef struct store_wrec {
  struct iovec iov[2];    /* in: header, payload */
  uint64_t bytes;         /* in: sum of the two */
  store_seg *seg;         /* out: where it went (NULL if it failed before a reserve) */
  uint64_t seg_id, off;   /* out */
  int err;                /* out: 0, or an E8S_ERR_* (detail set in the thread that saw it) */
} store_wrec;
/* Data stage: returns the batch's ticket for store_wp_sync. Records with err set are skipped. */
uint64_t store_wp_write(e8s_store *st, int lane, store_wrec *r, size_t n);
/* The same, all or nothing (compaction): if one record fails, every record of the batch fails
 * and the active segment is cut back to where the batch began (its space given back). */
uint64_t store_wp_write_all(e8s_store *st, int lane, store_wrec *r, size_t n);
/* Sync stage of the lane's ticket (every ticket must pass here exactly once, in any thread). */
void store_wp_sync(e8s_store *st, int lane, uint64_t ticket, store_wrec *r, size_t n);
/* The records no longer hold their segments (after the index commit, or on giving up). */
void store_wp_release(e8s_store *st, store_wrec *r, size_t n);

/* ---------------------------------------------------------------- segments (store_seg.c) */
/* Reference to segment id for reading (opens its file lazily). NULL if gone or retired. */
store_seg *store_seg_acquire(e8s_store *st, uint64_t id);
void store_seg_release(e8s_store *st, store_seg *s);
/* Marks a segment removed from the index; unlinks now or at the last release (read-write). */
void store_seg_retire(e8s_store *st, uint64_t id);
/* Writer (wlock): make sure wseg can take `bytes` more, creating a new segment if needed
 * (file + header + fdatasync + directory fsync). */
int store_seg_reserve(e8s_store *st, store_lane *l, uint64_t bytes, store_seg **seg,
                      uint64_t *off);
/* Writer: stop appending to the current segment (after a write or fsync failure). */
void store_seg_seal_active(e8s_store *st, store_lane *l);
/* Punches the whole file-system blocks inside the byte ranges gaps[0..n) ([start, end)) of
 * segment id's file (store_punch.c says when that is safe), under seg_mu, unless a reader holds
 * the segment (then 2, nothing done) or it is active, pending or retired (then 1). *freed =
 * bytes of blocks given back. 0, 1, 2, -EOPNOTSUPP (no hole punching here) or -errno. */
int store_seg_punch(e8s_store *st, uint64_t id, const uint64_t (*gaps)[2], size_t n,
                    uint64_t *freed);
/* 1 if segment id is being appended or holds pending records: not to be dropped/compacted. */
int store_seg_busy(e8s_store *st, uint64_t id);
/* pending +1 / -1 (with a reference) on a segment the pipeline wrote to. */
void store_seg_pending_add(e8s_store *st, store_seg *s);
void store_seg_pending_done(e8s_store *st, store_seg *s);
void store_seg_set_sync_failed(e8s_store *st, store_seg *s);
int store_seg_sync_failed(e8s_store *st, store_seg *s);
void store_seg_table_free(e8s_store *st);
/* Reads payload of a record at (seg, off) into buf and checks header + CRC.
 * E8S_OK, E8S_ERR_DATALOSS (with *found_crc), E8S_ERR_IO, E8S_ERR_NOTFOUND (segment gone). */
int store_seg_read_payload(e8s_store *st, const store_chunk_val *rec, const uint8_t key[32],
                           void *buf, uint32_t *found_crc);
/* The same on a segment the caller holds (store_seg_acquire). */
int store_seg_read_from(store_seg *s, const store_chunk_val *rec, const uint8_t key[32],
                        void *buf, uint32_t *found_crc);
char *store_seg_path(const e8s_store *st, uint64_t id);

/* ---------------------------------------------------------------- pins (store_pin.c) */
void store_pin_reader_add(e8s_store *st, const uint8_t key[32]);
void store_pin_reader_drop(e8s_store *st, const uint8_t key[32]);
int store_pin_is_pinned(e8s_store *st, const uint8_t key[32], uint64_t now_ms);
/* A lease on keys[0..n) of namespace ns_id; drops the oldest leases (of the namespace first)
 * to stay under the caps. Returns its id, 0 when out of memory, or UINT64_MAX when n alone is
 * over a cap (nothing leased). */
uint64_t store_lease_create(e8s_store *st, uint32_t ns_id, const uint8_t (*keys)[32], size_t n);
int store_lease_drop(e8s_store *st, uint64_t id);
void store_lease_expire(e8s_store *st, uint64_t now_ms);
void store_pin_free(e8s_store *st);
/* Records a use of key (LRU), applied at the next write transaction. */
void store_touch(e8s_store *st, const uint8_t key[32]);
/* Applies pending touches inside the writer's transaction. */
int store_touch_flush(e8s_store *st, MDB_txn *txn);

/* ---------------------------------------------------------------- chunks, eviction */
int store_chunk_get(MDB_txn *txn, e8s_store *st, const uint8_t key[32], store_chunk_val *v);
/* Inserts a new chunk (LRU entries, segment, namespace and store accounting). */
int store_chunk_insert(MDB_txn *txn, e8s_store *st, const uint8_t key[32],
                       const store_chunk_val *v);
/* Removes a chunk and its accounting; retires its segment if it became empty.
 * retire_out: set to the segment id to retire after commit (or 0). quarantine: also record it
 * in the quarantine list with found_crc. */
int store_chunk_remove(MDB_txn *txn, e8s_store *st, const uint8_t key[32],
                       const store_chunk_val *v, int quarantine, uint32_t found_crc,
                       uint64_t *retire_out);
/* Points a chunk at a copy of its record at (seg_id, off), moving the live-byte accounting. */
int store_chunk_relocate(MDB_txn *txn, e8s_store *st, const uint8_t key[32],
                         store_chunk_val *v, uint64_t seg_id, uint64_t off,
                         uint64_t *retire_out);
/* Changes session refs by delta (+1/-1), moving it out of / into the LRU. */
int store_chunk_ref(MDB_txn *txn, e8s_store *st, const uint8_t key[32], int delta);
/* Drops the session refs that deletes in steps left pending (store_session.c: after a crash,
 * or a step that failed); E8S_OK when none is left. */
int store_session_unref_pending(e8s_store *st);
/* Evicts LRU unpinned chunks (of ns_id, or of the store if ns_id == 0) until `need` bytes are
 * freed. *freed gets the bytes freed. Segment ids to retire are appended to rs. */
typedef struct store_retire_list { uint64_t *ids; size_t n, cap; } store_retire_list;
int store_evict(MDB_txn *txn, e8s_store *st, uint32_t ns_id, uint64_t need, uint64_t *freed,
                store_retire_list *rs);
int store_retire_add(store_retire_list *rs, uint64_t id);
/* Removes chunk `key` of namespace ns_id unless a session lists it or a pin (reader, lease,
 * put in flight) holds it at now_ms: E8S_OK (its segment, if retired, added to rs),
 * E8S_ERR_NOTFOUND (none, or another namespace's), E8S_ERR_BUSY; *refs_out (if set): its
 * session refs (0 when not found). Sets no error message: the callers word their own. Shared
 * by e8s_chunk_delete and e8s_chunks_delete. */
int store_chunk_delete_unpinned(MDB_txn *txn, e8s_store *st, uint32_t ns_id,
                                const uint8_t key[32], uint64_t now_ms, uint32_t *refs_out,
                                store_retire_list *rs);
void store_retire_apply(e8s_store *st, store_retire_list *rs); /* after commit; frees list */
int store_ns_load(MDB_txn *txn, e8s_store *st, uint32_t ns_id, store_ns_val *v);
int store_ns_store(MDB_txn *txn, e8s_store *st, uint32_t ns_id, const store_ns_val *v);
/* Quarantines key if the index still points at rec (read-write). */
void store_quarantine(e8s_store *st, const uint8_t key[32], const store_chunk_val *rec,
                      uint32_t found_crc);
/* 1 if rec's segment file does not exist while the index (read twice, around the check) still
 * points key at rec: the file was removed or lost outside the store, the chunk's bytes are gone.
 * (A segment that compaction or eviction retires is unlinked only after the commit that moved
 * its records, so a reader that sees the same record before and after the check cannot confuse
 * it with that; other open errors, e.g. EMFILE, are not a loss.) */
int store_seg_lost(e8s_store *st, const uint8_t key[32], const store_chunk_val *rec);

/* Segment seg_id's index end is raised to cover [off, off + bytes) (the entry is created, with
 * no live bytes, if missing): a record written but not indexed (its put failed, or another
 * put of the key won) is then dead space below the end that replay at open never revives. */
int store_seg_cover(MDB_txn *txn, e8s_store *st, uint64_t seg_id, uint64_t off, uint64_t bytes);
/* Removes segment seg_id from the index and leaves a drop marker (meta 'D' + be64 id), so that
 * open unlinks a file whose unlink a crash prevented instead of replaying it as new. */
int store_seg_index_drop(MDB_txn *txn, e8s_store *st, uint64_t seg_id);
int store_seg_dropped(MDB_txn *txn, e8s_store *st, uint64_t seg_id); /* 1 if marked */
int store_seg_forget_drop(MDB_txn *txn, e8s_store *st, uint64_t seg_id);
/* The put path's budget check for one record of `bytes` in namespace ns_id, given bytes already
 * planned in this transaction in total (pending) and in the namespace (pending_ns): evicts LRU
 * unpinned chunks (namespace quota first, then the store budget), appending retired segment ids
 * to rs; E8S_ERR_QUOTA / E8S_ERR_FULL if the rest is pinned. */
int store_make_room(MDB_txn *txn, e8s_store *st, store_retire_list *rs, uint32_t ns_id,
                    uint64_t bytes, uint64_t pending, uint64_t pending_ns);
/* Open (read-write): segment records past the index's end of their segment (a put whose LMDB
 * commit did not reach the disk, or one cut off by a crash after its fdatasync) are checked
 * (both header CRCs, payload CRC32C) and indexed as a put would have; files are cut after the
 * last valid record; files of dropped segments are unlinked (store_replay.c). */
int store_replay(e8s_store *st);

/* ---------------------------------------------------------------- full disk (store_space.c) */
/* Before mdb_env_open (read-write): allocates the blocks of ixdir's lock file (all of it) and
 * data file's first pages, creating them; a full disk is E8S_ERR_NOSPC naming st->dir. */
int store_space_prealloc(e8s_store *st, const char *ixdir);
/* Open (after the index): st->ix_reserve, ix_reserve_max and seg_bytes (store_space_sizes; the
 * reserve at its ceiling if a segment already reached half of it), the reserve's first
 * allocation (read-write). */
int store_space_open(e8s_store *st);
/* The index reserve and the segment size for a file system of fs_bytes (0 = unknown) and the
 * configured reserve and segment size, bytes (the rule: store_space.c, e8store.h FULL DISK). */
void store_space_sizes(uint64_t fs_bytes, uint64_t cfg_reserve, uint64_t cfg_segment,
                       uint64_t *reserve, uint64_t *reserve_max, uint64_t *segment);
/* A segment of seg_bytes was sealed: the reserve becomes its ceiling if the segment reached
 * half of it (allocated by the next store_space_refill). Any thread. */
void store_space_seg_grew(e8s_store *st, uint64_t seg_bytes);
/* After a write commit (wlock held): allocates the index data file up to its last page plus
 * the reserve again; sets or clears ix_short. */
void store_space_refill(e8s_store *st);
/* A failed mdb_txn_commit: E8S_ERR_NOSPC (detail says disk full) when the file system has no
 * room (LMDB reports a short write as EIO), else the usual mapping. */
int store_space_commit_err(e8s_store *st, int mdb_rc);
/* Admission of a put that writes `bytes` to disk (records plus STORE_IX_CHUNK_BYTES of index
 * growth per new chunk; no lock held): E8S_OK, or E8S_ERR_NOSPC after evicting unpinned chunks
 * did not free enough disk. */
#define STORE_IX_CHUNK_BYTES 1536u /* measured ~1.1 KB of index file per one-token chunk */
#define STORE_IX_TXN_BYTES (64u << 10) /* new pages of one commit: copied B-tree paths */
int store_space_admit(e8s_store *st, uint64_t bytes);
/* A full disk during a delete (store_session.c): evicts unpinned chunks in LRU order until
 * segment files that became empty give back an index reserve's bytes (their index entries go
 * too, so the index has free pages again); 1 if any chunk was evicted. No lock held. */
int store_space_evict_room(e8s_store *st);
/* Bytes that can be written now: the file system's free bytes plus what the write lanes have
 * allocated ahead. */
uint64_t store_space_room(e8s_store *st);
/* Compaction on a full disk: gives the index reserve but its last quarter (at least 32 KiB)
 * back to the file system (the blocks past the index file; the quarter kept is for the
 * compaction's commit and for deletes) so that a segment's live records of `need` bytes can be copied. Only one lender at
 * a time; meanwhile the store counts as short (puts refused, no refill). Returns the bytes
 * lent, 0 if none (another lender, no fallocate, or not enough to cover need: then nothing is
 * lent). store_space_lend_end takes the reserve back (wlock not held by the caller). */
uint64_t store_space_lend(e8s_store *st, uint64_t need);
void store_space_lend_end(e8s_store *st);
/* Full-disk admission's last step (store_compact.c): compacts sealed segments with dead bytes,
 * emptiest first, each only when its live records fit (store_space_lend), until `need` bytes
 * are free or none fits; at most a few segments. Returns the bytes the first segment that did
 * not fit needed (0 if none was skipped). */
uint64_t store_compact_for_room(e8s_store *st, uint64_t need);
/* Full disk (store_punch.c): punches the blocks of dead records out of sealed segments after
 * flushing the index; returns the bytes given back to the file system (0 where hole punching
 * is refused: then never again for this open). No lock held by the caller. */
uint64_t store_space_punch(e8s_store *st);
/* 1 if the index (a fresh read transaction) still points key at rec's segment and offset. */
int store_index_points_at(e8s_store *st, const uint8_t key[32], const store_chunk_val *rec);
/* E8S_ERR_NOSPC while the index reserve cannot be kept, or the disk has less than `bytes` (the
 * session value's growth) outside it (before sessions grow), else E8S_OK. */
int store_space_grow_ok(e8s_store *st, uint64_t bytes);

/* Reads up to max chunk records in key order after `after` (exclusive; NULL = first). */
typedef struct scan_item { uint8_t key[32]; store_chunk_val rec; } scan_item;
int store_scan_page(e8s_store *st, const uint8_t *after, scan_item *out, size_t max, size_t *n);

static inline uint64_t store_rec_bytes(uint64_t payload) {
  return payload + E8S_RECORD_HEADER_BYTES;
}

#endif /* STORE_INT_H */
