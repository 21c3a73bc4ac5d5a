/* kvd_payload.h: what e8kvd stores as a chunk's payload in libe8store.
 *
 *   payload = codec chunk bytes (codec/FORMAT.md; e8c_chunk_info_get parses them)
 *             || token ids: n_tokens x uint32 little-endian
 *             || n_tokens: uint32 little-endian
 *             || magic "E8TK" (4 bytes)
 *
 * The token trailer keeps the chunk's token ids next to its KV (the store keeps only their
 * digest), so GetChunks can return them and e8kvctl can export a store offline and import it
 * elsewhere (chunk keys depend on the token ids). The store's CRC32C covers the whole payload.
 * The trailer's 4 bytes per token count as stored bytes in bpe like every other byte.
 */
#ifndef KVD_PAYLOAD_H
#define KVD_PAYLOAD_H

#include <stddef.h>
#include <stdint.h>

#define KVD_TRAILER_MAGIC "E8TK"

/* Bytes the trailer takes for n tokens. */
static inline size_t kvd_trailer_size(uint32_t n) { return (size_t)n * 4 + 8; }

/* Writes the trailer for tokens[0..n) at out (kvd_trailer_size(n) bytes). */
void kvd_trailer_write(uint8_t *out, const uint32_t *tokens, uint32_t n);

/* Splits a payload: *chunk_bytes = bytes of the codec chunk, *tokens_le points at the n
 * little-endian token ids inside the payload, *n_tokens = n. -1 if the trailer is missing or
 * inconsistent. */
int kvd_payload_split(const uint8_t *payload, size_t len, size_t *chunk_bytes,
                      const uint8_t **tokens_le, uint32_t *n_tokens);

/* Reads token i of a little-endian token array. */
static inline uint32_t kvd_token_at(const uint8_t *le, size_t i) {
  const uint8_t *p = le + 4 * i;
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

#endif
