/* e8store.h: libe8store, the e8kv block store. This header is its manual.
 *
 * WHAT IT IS
 *   A durable, bounded store of KV-cache *chunks* (see docs/DESIGN.md, Vocabulary) on one
 *   machine. A chunk is an opaque payload (the daemon puts the codec's frames there; the store
 *   never looks inside) addressed by a 32-byte *chunk key*, the SHA-256 chain hash of
 *   (namespace salt, model fingerprint id, parent chunk key, this chunk's token ids).
 *   Next to each chunk the store keeps the digest of its token ids, and every lookup checks it,
 *   so a key collision or a foreign hash can never serve another sequence's bytes.
 *   The store knows nothing of gRPC or of the codec.
 *
 * ON DISK (a data directory)
 *   DIR/segments/NNNNNNNNNNNNNNNN.seg  append-only segment files: a 64-byte segment header, then
 *                                      records = 192-byte record header (magic "E8SR", chunk key,
 *                                      payload length, payload CRC32C, tokens, namespace,
 *                                      fingerprint, parent key, token digest, raw bytes, time,
 *                                      two header CRC32Cs: all the index keeps about the chunk)
 *                                      + payload.
 *   DIR/index/                         LMDB environment: chunks, sessions, namespaces,
 *                                      fingerprints, segments, quarantine, LRU order.
 *   DIR/LOCK                           flock()ed by the one read-write opener.
 *   A write is: payload written -> fdatasync (plus a directory fsync when the segment is new)
 *   -> LMDB commit -> the call returns success. So the index never points at bytes that are not
 *   on disk, and a record whose call did not return success is never visible, now or after a
 *   crash. A put's LMDB commit is lazy (MDB_NOMETASYNC: LMDB's data pages are flushed, its meta
 *   page is written but flushed only by the next commit or close): one device flush less per
 *   put, LMDB stays consistent, and a power loss can undo that last commit. Its records are on
 *   disk already and each carries what the index needs, so the next read-write open replays
 *   every record past the end the index knows for its segment (both header CRCs and the payload
 *   CRC checked; first writer of a key wins; budget and quota as for a put) and cuts the file
 *   after the last one that checks. Every commit raises that end over all the records its puts
 *   wrote, and a commit after which a caller hears of a failure (or a segment file is deleted),
 *   like every non-put commit (sessions, deletes, namespaces, compaction), is flushed before the
 *   call returns: so replay brings back only records of lost or unfinished commits, never one a
 *   caller was told failed. Stores of format 1 (64-byte record headers) are refused at open
 *   (E8S_ERR_UNSUPPORTED). A read-only open does not replay. All offsets and lengths are
 *   64-bit: segments and payloads beyond 4 GiB work. Puts append to up to two active segments at
 *   once (write lanes, see THREAD SAFETY), each allocated (fallocate) up to 64 MiB ahead of its
 *   last record (not while that would leave less free than the index reserve); the allocated
 *   tail is cut when the segment is sealed and at open, and is not counted in
 *   e8s_stats.disk_bytes. On a full disk, dead records inside sealed segments may be holes
 *   (FULL DISK); nothing reads them.
 *
 * UNITS
 *   bytes for sizes (uint64_t), token ids are uint32_t, tokens counts are in tokens,
 *   times are nanoseconds since the Unix epoch (CLOCK_REALTIME) unless said otherwise,
 *   durations in milliseconds where the name ends in _ms.
 *
 * CAPACITY
 *   "Used bytes" = sum over live records of (record header + payload) bytes. A store budget
 *   (e8s_config.capacity_bytes) and a per-namespace quota bound them. When a put would exceed
 *   either, the store evicts least-recently-used *unpinned* chunks first (same namespace first
 *   for a quota). A chunk is pinned while a session lists it, while a reader has it open
 *   (e8s_chunk_open .. e8s_chunk_close), and while an unexpired lookup lease holds it.
 *   Evicted and replaced records become dead bytes in their segment; a segment with no live
 *   record is deleted at once (when no reader uses it), a mostly dead one is rewritten by
 *   e8s_compact(). So disk usage can exceed used bytes by dead bytes until compaction;
 *   call e8s_maintain() periodically (the daemon: from a background thread, every few seconds).
 *
 * FULL DISK
 *   A full disk is an error to the caller (E8S_ERR_NOSPC, detail "disk full ..."), never a lost
 *   acknowledged record, and deleting frees space through the API (store_space.c):
 *   - the index keeps its data file allocated index_reserve_bytes past its last page (blocks
 *     past the end of the file), so deletes, evictions, compaction and quarantine can commit
 *     on a full disk; while that reserve cannot be refilled, puts and session creates/appends
 *     fail E8S_ERR_NOSPC before writing anything;
 *   - a put is admitted only when the file system's free bytes (plus what the active segments
 *     have allocated ahead) cover its new records, the index growth they bring (1536 bytes per
 *     new chunk plus 64 KiB for its commit and 64 KiB for the session write that lists them:
 *     an index-heavy store, chunks of one token, grows the index as much as the segments) plus
 *     8 KiB (block rounding, a new segment's header); a session write needs 64 bytes per listed
 *     chunk plus 64 KiB free outside the reserve; otherwise, in this order, until it fits: unpinned chunks are evicted in LRU
 *     order (as for the budget) until segment files that became empty give the bytes back;
 *     the emptiest sealed segments whose copy fits are compacted (below); the dead records of
 *     sealed segments give their whole file-system blocks back where they lie (hole punching,
 *     fallocate FALLOC_FL_PUNCH_HOLE, store_punch.c: no copy, so segments of any size, also
 *     those written before the size bound below); else the put fails E8S_ERR_NOSPC ("disk
 *     full: N bytes to write need M free, F are"). So on a full disk: delete sessions (their
 *     chunks become evictable), and the next put makes room. How much comes back: all of it
 *     where segments empty or compact; by hole punching, the blocks a dead record shares with
 *     a live neighbour stay (16 KiB records, every other one dead: about 2/3 of the deleted
 *     bytes are stored again, measured on a 4 MiB tmpfs with 1 MiB segments); records much
 *     smaller than a block come back only by compaction. File systems without hole punching
 *     (the NOSPC detail then says "does not punch holes"): only emptied or compacted segments
 *     give space back, so a store whose segments are too large to copy on the full disk
 *     (written before the bound, or with a larger segment_bytes on a larger file system)
 *     stays full until whole segments' sessions are deleted or disk is freed;
 *   - compaction copies a segment's live records only when they fit: in the free bytes, or on
 *     a full disk in the index reserve but its last quarter, lent for the copy and taken back
 *     after (puts and session creates are refused E8S_ERR_NOSPC meanwhile). A segment whose
 *     live records do not fit is skipped. So that they fit, the segment size is bounded by the
 *     file system (rule below): on a file system of 4 MiB or more, deleting sessions so that
 *     some segment is at most about half live (every other session, the older half, ...)
 *     makes a full disk take puts again by compaction alone. Segments written before this
 *     bound, or on a larger file system, keep their size and may stay too big to compact on a
 *     full disk (hole punching, above, still gives their dead blocks back). A copy whose
 *     write fails (disk filled meanwhile) is cut off again: nothing lost, nothing left (one
 *     whose index commit fails stays an unindexed segment tail until the next open);
 *   - sizes, from the file system's size FS (statvfs) at open: the index reserve starts at
 *     index_reserve_bytes (at most FS/16, at least 64 KiB); its ceiling R is that raised to
 *     segment_bytes where that is at most FS/64 (also at most FS/16); segments are sealed at
 *     min(segment_bytes, R/2) (a record larger than that gets a segment of its own). The
 *     reserve becomes R once a segment reaches half the starting reserve (sealed, or found at
 *     open), so a store that holds little keeps the small one. Defaults: 8 MiB FS: R 512 KiB,
 *     256 KiB segments; 1 GiB FS: R 16 MiB, 8 MiB segments; 16 GiB: 16 MiB, then R 256 MiB,
 *     128 MiB segments; 64 GiB and more: 16 MiB, then R 1 GiB, 512 MiB segments. The reserve
 *     is disk the store's data cannot use, and puts are refused while it cannot be allocated
 *     (a disk with less than the reserve free);
 *   - an LMDB commit that fails with EIO while the file system has no room (LMDB reports its
 *     short write on a full disk as EIO) is E8S_ERR_NOSPC, not E8S_ERR_IO;
 *   - e8s_session_delete fits the reserve whatever the session's size: a session of more than
 *     1024 chunks (or one whose single transaction fails E8S_ERR_NOSPC) goes in one small
 *     transaction that keeps its chain as pending pieces, whose refs are then dropped 1024 (down
 *     to 1 on a full disk) per transaction; a crash in between leaves pieces that the next
 *     open finishes. Deletes do not carry the reads' pending LRU ticks (the next write does).
 *     While the reserve is short, a chunk that a delete leaves with no session and no pin is
 *     removed at once instead of entering the LRU (its LRU entries would grow the index by
 *     about as much as the reserve holds), and if a step still does not fit, unpinned chunks
 *     are evicted first. Measured (test_store_space index-heavy tests): a 16 MiB tmpfs filled
 *     to 139 KB free by sessions of 3000 one-token chunks (then smaller ones), every session
 *     deleted, a put of 1500 chunks admitted after. The index file does not shrink after
 *     deletes and admission counts new index pages as if none were free in it (LMDB does
 *     reuse them), so after deleting index-heavy sessions a put is refused somewhat early.
 *
 * THREAD SAFETY
 *   An e8s_store is fully thread safe: any number of threads may call any function on the same
 *   handle at the same time. How: every index mutation (put, session and namespace changes,
 *   eviction, compaction, quarantine) runs under one writer mutex, because LMDB has one write
 *   transaction at a time. Puts use group commit and a three-stage pipeline (store_put.c):
 *   calls that arrive while a group is being written queue up and the next group takes them
 *   all (up to 64 calls, a quarter of the budget), so N concurrent callers share one io_uring
 *   submission, one fdatasync per segment and one LMDB commit (and groups of a lane that wait
 *   for its fdatasync share the next one); and while group n waits for its
 *   fdatasync or its LMDB commit, group n+1 is already being written, into a second active
 *   segment (two write lanes: two groups' fdatasyncs in flight at once), and groups that wait
 *   for the LMDB stage together share one commit; a group that reaches the LMDB stage while
 *   another is in its fdatasync waits for it (at most about one commit's time) so that both
 *   share the commit and its flush (the order payload -> fdatasync -> LMDB commit -> return
 *   holds for each). Concurrent callers therefore get more
 *   throughput than one (the daemon: serve puts from several threads); a single caller should
 *   still batch its records into one call. Readers (lookup, get, session get/list, stats) never
 *   take the writer mutex: they use their own LMDB read transaction and pread(), in parallel with each
 *   other and with the writer; they wait only while the LMDB map is being grown (a rwlock).
 *   Readers see only committed chunks. An e8s_chunk handle may be used by one thread at a time.
 *   Processes: one read-write opener per data directory (others get E8S_ERR_LOCKED), plus any
 *   number of read-only openers (E8S_OPEN_READONLY), e.g. e8kvctl inspecting a running daemon's
 *   directory. Open a directory at most once per process (LMDB's rule: its locks are per
 *   process); threads share the one handle. A read-only opener sees a snapshot per call; a read that races the writer's
 *   eviction or compaction may fail with E8S_ERR_NOTFOUND (retry the lookup).
 *
 * ERRORS
 *   Every function returning int returns E8S_OK (0) or a negative e8s_err code.
 *   e8s_error_name() names it; e8s_last_error_detail() gives a one-line human message of the
 *   calling thread's last error (file, segment, offset, errno text). No function aborts on bad
 *   input or on I/O failure.
 */
#ifndef E8STORE_H
#define E8STORE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define E8S_KEY_BYTES 32           /* chunk key, fingerprint id, token digest: SHA-256 */
#define E8S_SALT_BYTES 32          /* namespace salt */
#define E8S_NAME_MAX 255           /* namespace and session names, bytes, without the NUL */
#define E8S_META_MAX (64u << 10)   /* session user metadata, bytes */
#define E8S_FP_BLOB_MAX (64u << 10) /* serialized fingerprint blob, bytes */
#define E8S_CHUNK_TOKENS_MAX (1u << 20) /* tokens in one chunk */
#define E8S_RECORD_HEADER_BYTES 192 /* bytes counted per record on top of its payload */

/* ---------------------------------------------------------------- errors */
typedef enum e8s_err {
  E8S_OK = 0,
  E8S_ERR_INVAL = -1,      /* bad argument (NULL, size out of bounds, name too long, ...) */
  E8S_ERR_NOTFOUND = -2,   /* no such chunk, session, namespace or fingerprint */
  E8S_ERR_EXISTS = -3,     /* create of something that exists (namespace, session) */
  E8S_ERR_CONFLICT = -4,   /* chunk key stored with another token digest; fingerprint id with
                              another blob; appended chunk is not a continuation */
  E8S_ERR_DATALOSS = -5,   /* stored bytes fail their CRC: the chunk is quarantined and gone;
                              recompute it (everything else keeps working) */
  E8S_ERR_IO = -6,         /* I/O error (EIO, fsync failure): nothing of the call is visible */
  E8S_ERR_NOSPC = -7,      /* disk full: nothing of the failed records is visible; delete
                              sessions (the next put evicts) or free disk (see FULL DISK) */
  E8S_ERR_MAPFULL = -8,    /* LMDB map full at e8s_config.map_max_bytes: raise it */
  E8S_ERR_FULL = -9,       /* over the store budget and every chunk is pinned */
  E8S_ERR_QUOTA = -10,     /* over the namespace quota and every chunk of it is pinned */
  E8S_ERR_READONLY = -11,  /* mutation on a read-only handle */
  E8S_ERR_NOMEM = -12,     /* allocation failed */
  E8S_ERR_LOCKED = -13,    /* another process has the directory open read-write */
  E8S_ERR_CORRUPT = -14,   /* index or segment structure inconsistent (not a payload CRC) */
  E8S_ERR_RANGE = -15,     /* caller's buffer too small: the needed size is reported */
  E8S_ERR_BUSY = -16,      /* chunk is pinned (e8s_chunk_delete) */
  E8S_ERR_UNSUPPORTED = -17 /* io_uring explicitly requested but refused by the kernel */
} e8s_err;

/* 1 if rc is an error code (rc < 0), else 0. */
int e8s_is_error(int rc);
/* Static name of a code, e.g. "E8S_ERR_DATALOSS"; "E8S_ERR_UNKNOWN" for others. */
const char *e8s_error_name(int rc);
/* One-line message about the calling thread's last error; "" if none. Valid until the same
 * thread's next e8s_ call. */
const char *e8s_last_error_detail(void);

/* ---------------------------------------------------------------- open / close */
typedef enum e8s_io_engine {
  E8S_IO_AUTO = 0,   /* io_uring; the pwrite engine if io_uring setup says EPERM/ENOSYS */
  E8S_IO_URING = 1,  /* io_uring only: open fails with E8S_ERR_UNSUPPORTED if refused */
  E8S_IO_PWRITE = 2  /* pwritev + fdatasync */
} e8s_io_engine;

#define E8S_OPEN_READONLY 0x1u /* inspect a directory another process may be writing */
#define E8S_OPEN_CREATE 0x2u   /* create the directory layout if missing (read-write only) */

typedef struct e8s_config {
  const char *dir;          /* data directory; copied at open */
  uint32_t flags;           /* E8S_OPEN_* */
  e8s_io_engine io_engine;  /* default E8S_IO_AUTO */
  uint64_t capacity_bytes;  /* store byte budget (used bytes), 0 = unlimited; default 0 */
  uint64_t segment_bytes;   /* a segment is sealed and a new one started past this size;
                               default 1 GiB, min 1 MiB; the store uses at most half the index
                               reserve (FULL DISK: sizes) */
  uint64_t map_bytes;       /* initial LMDB map size, default 64 MiB */
  uint64_t map_max_bytes;   /* the map grows (doubling) up to this on MDB_MAP_FULL; default
                               64 GiB; E8S_ERR_MAPFULL beyond */
  uint32_t lease_ms;        /* lifetime of lookup pins (E8S_LOOKUP_PIN), default 30000 */
  uint64_t lease_max_chunks;    /* chunks held by unexpired lookup leases in the store, at most
                                   (a chunk counted once per lease); default 2^20 */
  uint64_t lease_ns_max_chunks; /* the same per namespace, default 2^18 (<= lease_max_chunks).
                                   A new lease that would pass a cap ends the oldest leases
                                   first, of its namespace for the namespace cap, of the store
                                   for the store cap (one tenant's lookups cannot take the
                                   whole store's cap) */
  uint32_t uring_entries;   /* io_uring submission queue size, default 64 */
  uint64_t index_reserve_bytes; /* disk kept allocated for the index past its last page, so
                               that deletes, evictions and compaction can commit on a full
                               disk; at most 1/16 of the file system, at least 64 KiB;
                               raised to segment_bytes (where that is at most 1/64 of the file
                               system) once a segment reaches half of it; default 16 MiB (see
                               FULL DISK: sizes) */
} e8s_config;

typedef struct e8s_store e8s_store;

/* Fills cfg with the defaults above (dir = NULL). */
void e8s_config_init(e8s_config *cfg);
/* Opens (or with E8S_OPEN_CREATE creates) the store in cfg->dir. Read-write open recovers:
 * truncates segment tails past the last indexed record, deletes segment files the index does
 * not know. On success *out is the handle (close with e8s_close). Errors: INVAL, NOTFOUND
 * (no store there and no CREATE), LOCKED, UNSUPPORTED, IO, CORRUPT, NOMEM. */
int e8s_open(const e8s_config *cfg, e8s_store **out);
/* Waits for nothing: the caller must have closed its e8s_chunk handles and stopped its threads.
 * NULL is a no-op. */
void e8s_close(e8s_store *st);
/* The io engine actually in use (never E8S_IO_AUTO). */
e8s_io_engine e8s_io_engine_used(const e8s_store *st);

/* ---------------------------------------------------------------- namespaces */
typedef struct e8s_ns_info {
  uint32_t id;                       /* stable, assigned at creation, never 0 */
  char name[E8S_NAME_MAX + 1];       /* NUL-terminated */
  uint8_t salt[E8S_SALT_BYTES];      /* enters every chunk key of this namespace */
  uint64_t quota_bytes;              /* 0 = no quota */
  uint64_t used_bytes;               /* live record bytes of its chunks */
  uint64_t chunks;                   /* live chunks */
  uint64_t created_ns;
  uint64_t tokens;                   /* tokens of its live chunks (sum of n_tokens) */
  uint64_t raw_bytes;                /* sum of its live chunks' e8s_put_rec.raw_bytes (what the
                                        caller said each payload stands for, e.g. fp16 K+V) */
} e8s_ns_info;
/* used_bytes, chunks, tokens and raw_bytes change in the same LMDB transaction as the put,
 * eviction, delete or quarantine that changes the chunk set, so they persist and never drift;
 * compaction moves records and leaves them unchanged. A store written before tokens/raw_bytes
 * existed gets them recomputed from its chunks at the first read-write open. */

/* Creates namespace `name` (1..E8S_NAME_MAX bytes, no NUL). salt: 32 bytes, or NULL for 32
 * random bytes (OpenSSL RAND_bytes). info (may be NULL) receives the result.
 * Errors: EXISTS (info is then filled with the existing one), INVAL, READONLY, MAPFULL, IO. */
int e8s_ns_create(e8s_store *st, const char *name, const uint8_t *salt, uint64_t quota_bytes,
                  e8s_ns_info *info);
/* Looks a namespace up by name. Errors: NOTFOUND, INVAL. */
int e8s_ns_get(e8s_store *st, const char *name, e8s_ns_info *info);
/* Looks a namespace up by id. Errors: NOTFOUND. */
int e8s_ns_get_by_id(e8s_store *st, uint32_t ns_id, e8s_ns_info *info);
/* Changes the quota (0 = none). Lowering it evicts nothing now: the next put does. */
int e8s_ns_set_quota(e8s_store *st, uint32_t ns_id, uint64_t quota_bytes);
/* Fills out[0..max) with namespaces in id order; *n_total = number of namespaces (may be > max). */
int e8s_ns_list(e8s_store *st, e8s_ns_info *out, size_t max, size_t *n_total);

/* ---------------------------------------------------------------- fingerprints */
/* Registers a serialized model fingerprint (opaque to the store, 1..E8S_FP_BLOB_MAX bytes)
 * under the 32-byte id the caller computed. Idempotent for the same blob.
 * Errors: CONFLICT (id already holds another blob), INVAL, READONLY, MAPFULL, IO. */
int e8s_fp_register(e8s_store *st, const uint8_t fp_id[E8S_KEY_BYTES], const void *blob,
                    size_t blob_bytes);
/* Copies the blob into buf (cap bytes); *blob_bytes = its size. Errors: NOTFOUND,
 * RANGE (cap too small; *blob_bytes tells the size needed). buf may be NULL with cap 0. */
int e8s_fp_get(e8s_store *st, const uint8_t fp_id[E8S_KEY_BYTES], void *buf, size_t cap,
               size_t *blob_bytes);

/* ---------------------------------------------------------------- chunk keys */
/* key = SHA-256 over, in order, each field as (1-byte tag, 8-byte little-endian length, bytes):
 *   0x45 "e8kv.chunk.v1" (domain), 0x01 salt (32), 0x02 fingerprint id (32),
 *   0x03 parent key (32, or length 0 when parent is NULL or all zero: the first chunk),
 *   0x04 token ids (4 * n_tokens bytes, each uint32 little-endian).
 * Pure function, thread safe. Errors: INVAL (n_tokens 0 or > E8S_CHUNK_TOKENS_MAX, NULL). */
int e8s_chunk_key(const uint8_t salt[E8S_SALT_BYTES], const uint8_t fp_id[E8S_KEY_BYTES],
                  const uint8_t *parent, const uint32_t *tokens, size_t n_tokens,
                  uint8_t key_out[E8S_KEY_BYTES]);
/* The token digest stored with a chunk: SHA-256 of fields 0x54 "e8kv.tokens.v1", 0x03 parent
 * (as above), 0x04 token ids. Computed by e8s_put itself; exposed for tools and tests. */
int e8s_token_digest(const uint8_t *parent, const uint32_t *tokens, size_t n_tokens,
                     uint8_t digest_out[E8S_KEY_BYTES]);

/* ---------------------------------------------------------------- put */
typedef struct e8s_put_rec {
  /* in */
  uint8_t key[E8S_KEY_BYTES];     /* normally e8s_chunk_key(); may be an engine's own hash;
                                     never all zero (that means "no parent") */
  uint8_t parent[E8S_KEY_BYTES];  /* parent chunk key; all zero for the first chunk */
  const uint32_t *tokens;         /* this chunk's token ids, n_tokens of them */
  uint32_t n_tokens;              /* 1..E8S_CHUNK_TOKENS_MAX */
  const void *payload;            /* opaque bytes; not retained after the call */
  uint64_t payload_bytes;         /* 1 .. 2^40 */
  uint64_t raw_bytes;             /* bytes the payload stands for uncompressed (e.g. the chunk's
                                     K and V as fp16), kept with the chunk and summed per
                                     namespace (e8s_ns_info.raw_bytes); 0 = not given */
  /* out */
  int result;                     /* E8S_OK or an e8s_err for this record */
  int existed;                    /* 1: key already stored with the same token digest; nothing
                                     written, the stored payload stays (first writer wins) */
} e8s_put_rec;

/* Stores a batch of chunks of namespace ns_id and fingerprint fp_id (registered before).
 * Durable when it returns: every record with result E8S_OK is on disk, fsynced and indexed.
 * Per record: E8S_OK (stored, or existed=1), CONFLICT (key stored with another token digest),
 * INVAL, FULL, QUOTA, IO, NOSPC, MAPFULL. A failed record is never visible, now or after a
 * restart; the others of the batch are unaffected (except IO from fsync, which fails them all).
 * Returns E8S_OK if every record succeeded, else the first failing record's code
 * (also NOTFOUND for an unknown namespace/fingerprint, READONLY: then every result is set).
 * Eviction to make room happens inside the call, in the same LMDB transaction. */
int e8s_put(e8s_store *st, uint32_t ns_id, const uint8_t fp_id[E8S_KEY_BYTES],
            e8s_put_rec *recs, size_t n_recs);

/* ---------------------------------------------------------------- lookup */
#define E8S_LOOKUP_PIN 0x1u /* pin the matched chunks under a lease (e8s_config.lease_ms) */

typedef struct e8s_lookup_result {
  size_t n_chunks;          /* matched chunks: keys[0..n_chunks) */
  uint64_t tokens_matched;  /* tokens covered by them (a prefix of the query) */
  uint64_t lease_id;        /* with E8S_LOOKUP_PIN and n_chunks > 0: release with
                               e8s_lease_release; otherwise 0. Leases are capped
                               (e8s_config.lease_max_chunks, lease_ns_max_chunks): a lease may
                               end before lease_ms when newer ones need its place (oldest
                               first); its chunks are then no longer pinned (e8s_chunk_open may
                               say NOTFOUND: the end of the prefix) */
} e8s_lookup_result;

/* Longest stored prefix of tokens[0..n_tokens) cut into chunks of chunk_tokens tokens (the last
 * may be shorter). For each chunk in order the store computes its key from the namespace salt,
 * fp_id and the previous key, finds it, and checks the stored token digest and token count;
 * the first miss or mismatch ends the prefix (a mismatch is counted as a miss, never served).
 * keys_out has room for max_keys keys; the lookup stops there. Touches matched chunks (LRU).
 * With E8S_LOOKUP_PIN the lease is taken just after the index read: a chunk evicted in between
 * shows up as E8S_ERR_NOTFOUND at e8s_chunk_open (treat it as the end of the prefix).
 * Errors: NOTFOUND (namespace), INVAL, FULL (with E8S_LOOKUP_PIN: the match alone has more
 * chunks than a lease cap; the result is filled, nothing is leased, lease_id is 0).
 * A prefix of 0 chunks is success. */
int e8s_lookup(e8s_store *st, uint32_t ns_id, const uint8_t fp_id[E8S_KEY_BYTES],
               const uint32_t *tokens, size_t n_tokens, uint32_t chunk_tokens, uint32_t flags,
               uint8_t (*keys_out)[E8S_KEY_BYTES], size_t max_keys, e8s_lookup_result *res);
/* Releases a lookup lease before it expires. Unknown, expired or capped-out (ended early by
 * the lease caps) ids: E8S_ERR_NOTFOUND. */
int e8s_lease_release(e8s_store *st, uint64_t lease_id);
/* Ends every lookup lease now, for a process about to close the store (its leases die with it;
 * e8kvd's clean stop, so that purges waiting for them can run first). */
void e8s_leases_end(e8s_store *st);

/* ---------------------------------------------------------------- get */
typedef struct e8s_chunk_info {
  uint8_t key[E8S_KEY_BYTES];
  uint8_t parent[E8S_KEY_BYTES];
  uint8_t fp_id[E8S_KEY_BYTES];
  uint8_t token_digest[E8S_KEY_BYTES];
  uint32_t ns_id;
  uint32_t n_tokens;
  uint64_t payload_bytes;
  uint32_t crc32c;          /* CRC32C (Castagnoli) of the payload */
  uint32_t session_refs;    /* sessions that pin it */
  uint64_t segment_id;
  uint64_t offset;          /* of its record header in the segment, bytes */
  uint64_t created_ns;
  uint64_t last_access;     /* logical LRU clock: larger = more recently used */
} e8s_chunk_info;

typedef struct e8s_chunk e8s_chunk;  /* an open chunk: holds a read pin */

/* Metadata of a chunk, no pin. Errors: NOTFOUND (also for another namespace's chunk),
 * DATALOSS (it was quarantined). */
int e8s_chunk_stat(e8s_store *st, uint32_t ns_id, const uint8_t key[E8S_KEY_BYTES],
                   e8s_chunk_info *info);
/* Opens a chunk for reading: takes a read pin (no eviction, no segment removal until
 * e8s_chunk_close), fills info (may be NULL). Errors: NOTFOUND, DATALOSS, NOMEM. */
int e8s_chunk_open(e8s_store *st, uint32_t ns_id, const uint8_t key[E8S_KEY_BYTES],
                   e8s_chunk **out, e8s_chunk_info *info);
/* Reads the whole payload into buf (cap >= payload_bytes) and checks its CRC32C.
 * Errors: RANGE (cap too small), DATALOSS (CRC mismatch or short file: the chunk is quarantined,
 * on a read-write handle), IO. */
int e8s_chunk_read(e8s_chunk *ch, void *buf, uint64_t cap);
/* Releases the read pin. NULL is a no-op. */
void e8s_chunk_close(e8s_chunk *ch);
/* Read pins on keys[0..n) without opening anything, stored or not (a pin of a key not stored yet
 * holds the chunk from the moment a put stores it): e8s_chunk_delete, e8s_purge_unlisted and
 * eviction keep a pinned chunk. For a writer that stores chunks first and lists them in a session
 * later (e8kvd's PutChunks): without it a purge in between deletes them and the session write
 * fails NOTFOUND. Release each with e8s_keys_unpin (pins count: pinning twice needs two). Thread
 * safe. Errors: INVAL, NOMEM (nothing pinned then). */
int e8s_keys_pin(e8s_store *st, const uint8_t (*keys)[E8S_KEY_BYTES], size_t n);
void e8s_keys_unpin(e8s_store *st, const uint8_t (*keys)[E8S_KEY_BYTES], size_t n);
/* open + read + close. *payload_bytes receives the size (also on RANGE). */
int e8s_get(e8s_store *st, uint32_t ns_id, const uint8_t key[E8S_KEY_BYTES], void *buf,
            uint64_t cap, uint64_t *payload_bytes);
/* Removes an unpinned chunk now. Errors: NOTFOUND, BUSY (pinned), READONLY. */
int e8s_chunk_delete(e8s_store *st, uint32_t ns_id, const uint8_t key[E8S_KEY_BYTES]);

/* What e8s_purge_unlisted did. */
typedef struct e8s_purge_report {
  uint64_t chunks_purged; /* chunks deleted */
  uint64_t bytes_purged;  /* their record bytes (header + payload), now dead bytes */
  uint64_t chunks_held;   /* unlisted chunks a reader or an unexpired lookup lease pins: kept */
} e8s_purge_report;
typedef void (*e8s_key_fn)(void *ctx, const uint8_t key[E8S_KEY_BYTES]);
/* Deletes every chunk of namespace ns_id that no session lists (prefix-cache entries: chunks of
 * sessions deleted without purging, puts without a session), each as e8s_chunk_delete would.
 * A chunk a reader or an unexpired lookup lease pins is kept and passed to held(ctx, key) (held
 * may be NULL), so that the caller can delete it once that pin ends. Runs in write transactions
 * of at most 1024 chunks, so puts interleave; a chunk put or unlisted meanwhile may or may not
 * be seen. rep (may be NULL) counts what was done, also when an error stops it partway (what
 * was committed stays deleted). Errors: INVAL (ns_id 0), READONLY, NOMEM, index errors. */
int e8s_purge_unlisted(e8s_store *st, uint32_t ns_id, e8s_key_fn held, void *ctx,
                       e8s_purge_report *rep);
/* e8s_chunk_delete of each (ns_ids[i], keys[i]), up to 1024 per write transaction (one index
 * commit each instead of one per chunk). results[i]: E8S_OK (deleted), E8S_ERR_NOTFOUND, or
 * E8S_ERR_BUSY (pinned; session_refs[i], when session_refs is not NULL, says how many
 * sessions list it: 0 = only a read or a lookup lease holds it). Returns E8S_OK, or the error
 * that stopped it (READONLY, NOMEM, index errors): results of the chunks it did not reach are
 * that error. */
int e8s_chunks_delete(e8s_store *st, const uint32_t *ns_ids, const uint8_t (*keys)[E8S_KEY_BYTES],
                      size_t n, int *results, uint32_t *session_refs);

/* ---------------------------------------------------------------- sessions */
typedef struct e8s_session_info {
  uint32_t ns_id;
  char name[E8S_NAME_MAX + 1];
  uint8_t fp_id[E8S_KEY_BYTES];
  uint64_t n_tokens;        /* sum of its chunks' tokens */
  uint64_t n_chunks;
  uint64_t meta_bytes;
  uint64_t created_ns;
  uint64_t updated_ns;
} e8s_session_info;

#define E8S_SESSION_REPLACE 0x1u /* create: replace an existing session (its pins are dropped) */

/* Creates an empty session (ns_id, name) for fingerprint fp_id with user metadata
 * meta[0..meta_bytes) (0..E8S_META_MAX, copied). Errors: EXISTS (without REPLACE), NOTFOUND
 * (namespace, fingerprint), INVAL, READONLY, MAPFULL, IO. */
int e8s_session_create(e8s_store *st, uint32_t ns_id, const char *name,
                       const uint8_t fp_id[E8S_KEY_BYTES], const void *meta, size_t meta_bytes,
                       uint32_t flags);
/* Appends chunks (stored, same namespace and fingerprint) to the session's chain and pins them.
 * keys[0]'s parent must be the session's last key (all zero when empty), and each next key's
 * parent the previous one. All or nothing. Errors: NOTFOUND (session or a chunk),
 * DATALOSS (a chunk quarantined), CONFLICT (not a continuation / other fingerprint), INVAL. */
int e8s_session_append(e8s_store *st, uint32_t ns_id, const char *name,
                       const uint8_t (*keys)[E8S_KEY_BYTES], size_t n_keys);
/* One session change in ONE LMDB transaction (so all or nothing, also across a crash):
 *   create = 1: creates the session (EXISTS if it exists) for fp_id with meta, then appends
 *               keys[0..n_keys);
 *   create = 0: the session must exist with fingerprint fp_id (CONFLICT otherwise; fp_id may be
 *               NULL: not checked) and hold exactly expect_chunks chunks, the count the caller
 *               saw (CONFLICT otherwise: someone changed it), keep_chunks <= expect_chunks.
 *               keep_chunks < its chunks: CUT, the chain becomes its
 *               first keep_chunks keys followed by keys[] (the dropped tail's pins go; the
 *               session's created time restarts); = its chunks: APPEND keys[]. set_meta = 1
 *               replaces the metadata with meta (a CUT without set_meta keeps the old one).
 * keys[] must continue the kept chain (as e8s_session_append). Errors: those of
 * e8s_session_create and e8s_session_append; on any error nothing changed. */
typedef struct e8s_session_change {
  int create;
  const uint8_t *fp_id;                  /* 32 bytes; required with create */
  uint64_t expect_chunks;                /* create = 0 only */
  uint64_t keep_chunks;                  /* create = 0 only */
  int set_meta;                          /* create = 0 only (create always sets it) */
  const void *meta;
  size_t meta_bytes;                     /* 0..E8S_META_MAX */
  const uint8_t (*keys)[E8S_KEY_BYTES];  /* appended, in chain order; may be NULL with 0 */
  size_t n_keys;
} e8s_session_change;
int e8s_session_write(e8s_store *st, uint32_t ns_id, const char *name,
                      const e8s_session_change *chg);
/* Replaces the user metadata. Errors: NOTFOUND, INVAL, READONLY. */
int e8s_session_set_meta(e8s_store *st, uint32_t ns_id, const char *name, const void *meta,
                         size_t meta_bytes);
/* Reads a session: info (may be NULL); keys[0..max_keys) its chain (may be NULL with 0);
 * meta[0..meta_cap) its metadata (may be NULL with 0). Errors: NOTFOUND, RANGE (a buffer too
 * small: info is still filled and tells the sizes needed). */
int e8s_session_get(e8s_store *st, uint32_t ns_id, const char *name, e8s_session_info *info,
                    uint8_t (*keys)[E8S_KEY_BYTES], size_t max_keys, void *meta,
                    size_t meta_cap);
/* Deletes a session and drops its pins (its chunks become cache entries). Errors: NOTFOUND. */
int e8s_session_delete(e8s_store *st, uint32_t ns_id, const char *name);

typedef struct e8s_session_filter {
  const char *name_prefix;    /* NULL or "": any */
  const uint8_t *fp_id;       /* NULL: any fingerprint */
  uint64_t updated_after_ns;  /* 0: any */
} e8s_session_filter;

/* Lists sessions of ns_id in name order (bytewise), after the name `after` (exclusive; NULL or
 * "" = from the start), matching filter (may be NULL), at most max into out. *n_out = number
 * written; *more = 1 if more may follow (pass out[*n_out - 1].name as the next `after`). */
int e8s_session_list(e8s_store *st, uint32_t ns_id, const e8s_session_filter *filter,
                     const char *after, e8s_session_info *out, size_t max, size_t *n_out,
                     int *more);

/* ---------------------------------------------------------------- stats, maintenance */
typedef struct e8s_stats {
  uint64_t used_bytes;       /* live record bytes (headers + payloads) */
  uint64_t capacity_bytes;   /* the budget, 0 = unlimited */
  uint64_t disk_bytes;       /* bytes of the indexed segment files (live + dead); unindexed
                                tails are cut at the next read-write open */
  uint64_t chunks, sessions, namespaces, fingerprints, segments;
  uint64_t quarantined;      /* chunks in the quarantine list */
  uint64_t map_bytes, map_used_bytes;  /* LMDB map size and pages in use, bytes */
  /* counters since this open (not persisted): */
  uint64_t lookups, lookup_hit_chunks, lookup_misses; /* a miss = a lookup that ended before
                                                         the end of its query */
  uint64_t evictions, puts_stored, puts_existed, reads, read_bytes, crc_failures;
  uint64_t lease_chunks;     /* chunks held by unexpired lookup leases now */
  uint64_t leases_dropped;   /* leases ended early by the lease caps */
  e8s_io_engine engine;
} e8s_stats;

int e8s_stats_get(e8s_store *st, e8s_stats *out);

/* Called by e8s_verify/e8s_compact with (done, total) units (chunks or segments); return
 * nonzero to stop early. May be NULL. */
typedef int (*e8s_progress_fn)(void *ctx, uint64_t done, uint64_t total);

typedef struct e8s_verify_report {
  uint64_t chunks_checked, bytes_checked;
  uint64_t newly_quarantined;  /* CRC failures found by this scan */
  uint64_t quarantined;        /* quarantine list size after the scan */
} e8s_verify_report;
/* Reads every live chunk and checks its CRC; failures are quarantined (read-write handle) or only
 * counted (read-only). Runs beside normal traffic. */
int e8s_verify(e8s_store *st, e8s_verify_report *rep, e8s_progress_fn fn, void *ctx);

typedef struct e8s_quarantine_entry {
  uint8_t key[E8S_KEY_BYTES];
  uint32_t ns_id;
  uint64_t segment_id, offset, payload_bytes;
  uint32_t stored_crc, found_crc;
  uint64_t when_ns;
} e8s_quarantine_entry;
/* Lists quarantined chunks in key order after `after` (exclusive, NULL = from the start). */
int e8s_quarantine_list(e8s_store *st, const uint8_t *after, e8s_quarantine_entry *out,
                        size_t max, size_t *n_out, int *more);

typedef struct e8s_compact_report {
  uint64_t segments_compacted, records_moved, bytes_moved, bytes_reclaimed;
} e8s_compact_report;
/* Rewrites every sealed segment whose dead fraction is >= min_dead_ratio (0..1; 0.5 is a good
 * default) by copying its live records to the active segment, then removes it once no reader
 * uses it. Live records are read outside the writer mutex and copied under it in pieces of at
 * most 64 MiB, so puts wait at most one piece. Segments go emptiest first (fewest live bytes),
 * each only when its live records fit in what the disk has free (see FULL DISK); one that does
 * not is skipped. When none fits, the dead records' blocks are given back first (hole
 * punching, counted in bytes_reclaimed) and the segments tried again. E8S_ERR_NOSPC when none
 * could be compacted for lack of room and no block came back (detail: bytes needed and free)
 * or a copy failed on a disk that filled meanwhile: either way no copy is left behind and the
 * index is unchanged. */
int e8s_compact(e8s_store *st, double min_dead_ratio, e8s_compact_report *rep,
                e8s_progress_fn fn, void *ctx);

/* Housekeeping for a background thread: drops expired leases, writes pending LRU touches,
 * removes fully dead segments no reader uses. Cheap; no compaction. */
int e8s_maintain(e8s_store *st);

#ifdef __cplusplus
}
#endif
#endif /* E8STORE_H */
