/* kvd_lease.h: Lookup leases as the client sees them.
 *
 * A Lookup pins the chunks it matched under a store lease (e8s_lookup with E8S_LOOKUP_PIN;
 * lifetime e8s_config.lease_ms = --lookup-lease-ms), so a GetChunks that follows cannot lose
 * them to eviction. The client gets the lease as an opaque 16-byte token:
 *   token = store lease id (8 bytes, little-endian) || first 8 bytes of
 *           HMAC-SHA256(process key, namespace id || lease id)
 * with a key drawn at random (OpenSSL RAND_bytes) once per daemon process. GetChunks'
 * release_lease gives it back; a token made for another namespace, another daemon process or
 * forged does not verify, so no tenant can release another's pins. After a restart old tokens
 * are refused (the leases died with the process anyway).
 *
 * Thread safety: all functions may be called from any thread.
 */
#ifndef KVD_LEASE_H
#define KVD_LEASE_H

#include <stddef.h>
#include <stdint.h>

#define KVD_LEASE_TOKEN_BYTES 16

/* Token for store lease `lease_id` of namespace ns. 0, or -1 if no key could be drawn. */
int kvd_lease_token(uint32_t ns, uint64_t lease_id, uint8_t out[KVD_LEASE_TOKEN_BYTES]);
/* The store lease id of a token, if it is a token of namespace ns: 0, else -1. */
int kvd_lease_parse(uint32_t ns, const uint8_t *token, size_t len, uint64_t *lease_id);

#endif
