/* kvd_purge.h: purges that wait for a read or a lookup lease to end.
 *
 * DeleteSession with purge_chunks and PurgeUnlisted delete every chunk nothing pins at once.
 * A chunk that no session lists but a read (GetChunks) or an unexpired lookup lease still
 * holds cannot be deleted yet (the store's pin rule); it goes to this pending list, and
 * kvd_purge_run (from the daemon's maintenance thread, every 2 s, and after each call that
 * releases a lease) deletes it once that pin has ended - a lease at the latest lease_ms after
 * its Lookup. A pending chunk that a session lists meanwhile (a new put of the same tokens into
 * a session) is dropped from the list and kept: sessions pin for good. The list lives in the
 * daemon's memory only: a clean stop ends the leases and runs the list before the store closes
 * (kvd_main.c); after a crash the leases are gone as well, and PurgeUnlisted (`e8kvctl gc`)
 * deletes such chunks; the marker file (kvd_purge_set_marker) makes the next start say so.
 *
 * Thread safety: all functions may be called from any thread.
 */
#ifndef KVD_PURGE_H
#define KVD_PURGE_H

#include <stddef.h>
#include <stdint.h>

#include "store/e8store.h"

/* kvd_purge_defer's errors. */
#define KVD_PURGE_NOMEM (-1)
#define KVD_PURGE_FULL (-2) /* the namespace has max_per_ns chunks pending already */

typedef struct kvd_purge kvd_purge;

/* A list that holds at most max_per_ns (>= 1) pending chunks per namespace (--max-purge-pending):
 * past it kvd_purge_defer fails and the caller reports an error rather than forgetting a
 * purge. The bound is per namespace so that one tenant filling its share cannot make another
 * tenant's purges fail (session 6: one shared list of 2^20 could). Memory: 36-72 bytes per
 * pending chunk in the list plus 16-32 in its hash index, at most namespaces x max_per_ns of
 * them. NULL: out of memory. */
kvd_purge *kvd_purge_create(size_t max_per_ns);
void kvd_purge_free(kvd_purge *p);  /* NULL is a no-op */
/* The max_per_ns given to kvd_purge_create. */
size_t kvd_purge_limit(const kvd_purge *p);
/* Remembers chunk `key` of namespace ns_id for deletion once unpinned (a key already pending
 * is not added twice). O(1) on average (a hash index: n chunks of one purge cost O(n)).
 * 0, KVD_PURGE_FULL when namespace ns_id has kvd_purge_limit chunks pending already,
 * KVD_PURGE_NOMEM when out of memory. */
int kvd_purge_defer(kvd_purge *p, uint32_t ns_id, const uint8_t key[E8S_KEY_BYTES]);
/* Tries each pending chunk: deleted or gone -> forgotten; a session lists it -> forgotten
 * (kept); still held by a read or lease -> stays pending; another store error -> stays
 * pending. Returns the number deleted now. */
size_t kvd_purge_run(kvd_purge *p, e8s_store *st);
/* Pending chunks now (of namespace ns_id; 0 = all namespaces). O(1). */
size_t kvd_purge_pending(kvd_purge *p, uint32_t ns_id);

/* The marker of pending purges: a file (path copied) that exists while the list is not empty.
 * kvd_purge_defer creates it, with fsync, when it adds to an empty list (once per such
 * transition); kvd_purge_run removes it when the list is empty again. A crash (kill -9) leaves
 * it behind, so the next e8kvd can tell the operator that purges were lost and `e8kvctl gc` is
 * due (kvd_main.c). A crash in the instant between a defer and the file's creation goes
 * unseen. Call once, before any defer. 0, or -1 when out of memory. */
int kvd_purge_set_marker(kvd_purge *p, const char *path);

#endif
