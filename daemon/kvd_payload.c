/* kvd_payload.c: the token trailer of stored payloads (see kvd_payload.h). */
#include "daemon/kvd_payload.h"

#include <string.h>

static void put32(uint8_t *p, uint32_t v) {
  p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); p[2] = (uint8_t)(v >> 16); p[3] = (uint8_t)(v >> 24);
}

void kvd_trailer_write(uint8_t *out, const uint32_t *tokens, uint32_t n) {
  for (uint32_t i = 0; i < n; i++) put32(out + 4 * (size_t)i, tokens[i]);
  put32(out + 4 * (size_t)n, n);
  memcpy(out + 4 * (size_t)n + 4, KVD_TRAILER_MAGIC, 4);
}

int kvd_payload_split(const uint8_t *payload, size_t len, size_t *chunk_bytes,
                      const uint8_t **tokens_le, uint32_t *n_tokens) {
  if (len < 8 || memcmp(payload + len - 4, KVD_TRAILER_MAGIC, 4) != 0) return -1;
  uint32_t n = kvd_token_at(payload + len - 8, 0);
  if (n == 0 || kvd_trailer_size(n) > len) return -1;
  *chunk_bytes = len - kvd_trailer_size(n);
  *tokens_le = payload + *chunk_bytes;
  *n_tokens = n;
  return 0;
}
