/* store_key.c: chunk keys and token digests (SHA-256 via OpenSSL EVP), CRC32C (isa-l),
 * record header encoding, clocks.
 *
 * Every hashed field is (1-byte tag, 8-byte little-endian length, bytes), so no two different
 * field sequences hash the same input bytes. Token ids are hashed as uint32 little-endian. */
#include <isa-l/crc.h>
#include <openssl/evp.h>
#include <string.h>
#include <time.h>

#include "store/store_int.h"

static void put_le32(uint8_t *p, uint32_t v) {
  for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static void put_le64(uint8_t *p, uint64_t v) {
  for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static uint32_t get_le32(const uint8_t *p) {
  uint32_t v = 0;
  for (int i = 3; i >= 0; i--) v = (v << 8) | p[i];
  return v;
}
static uint64_t get_le64(const uint8_t *p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
  return v;
}

int store_key_is_zero(const uint8_t k[32]) {
  uint8_t acc = 0;
  for (int i = 0; i < 32; i++) acc |= k[i];
  return acc == 0;
}

static int field(EVP_MD_CTX *c, uint8_t tag, const void *p, uint64_t len) {
  uint8_t h[9];
  h[0] = tag;
  put_le64(h + 1, len);
  if (EVP_DigestUpdate(c, h, sizeof h) != 1) return -1;
  return len ? (EVP_DigestUpdate(c, p, len) == 1 ? 0 : -1) : 0;
}

static int tokens_field(EVP_MD_CTX *c, const uint32_t *tokens, size_t n) {
  uint8_t h[9], buf[1024];
  h[0] = 0x04;
  put_le64(h + 1, (uint64_t)n * 4);
  if (EVP_DigestUpdate(c, h, sizeof h) != 1) return -1;
  size_t i = 0;
  while (i < n) {
    size_t m = 0;
    for (; i < n && m + 4 <= sizeof buf; i++, m += 4) put_le32(buf + m, tokens[i]);
    if (EVP_DigestUpdate(c, buf, m) != 1) return -1;
  }
  return 0;
}

static int parent_field(EVP_MD_CTX *c, const uint8_t *parent) {
  if (!parent || store_key_is_zero(parent)) return field(c, 0x03, NULL, 0);
  return field(c, 0x03, parent, 32);
}

static int hash_fields(const char *domain, uint8_t dtag, const uint8_t *salt, const uint8_t *fp,
                       const uint8_t *parent, const uint32_t *tokens, size_t n, uint8_t out[32]) {
  if (!tokens || n == 0 || n > E8S_CHUNK_TOKENS_MAX || !out)
    return store_err(E8S_ERR_INVAL, "chunk key: %zu tokens (1..%u)", n, E8S_CHUNK_TOKENS_MAX);
  EVP_MD_CTX *c = EVP_MD_CTX_new();
  if (!c) return store_err(E8S_ERR_NOMEM, "chunk key: EVP_MD_CTX_new");
  unsigned olen = 0;
  int bad = EVP_DigestInit_ex(c, EVP_sha256(), NULL) != 1 ||
            field(c, dtag, domain, strlen(domain)) || (salt && field(c, 0x01, salt, 32)) ||
            (fp && field(c, 0x02, fp, 32)) || parent_field(c, parent) ||
            tokens_field(c, tokens, n) || EVP_DigestFinal_ex(c, out, &olen) != 1 || olen != 32;
  EVP_MD_CTX_free(c);
  return bad ? store_err(E8S_ERR_NOMEM, "chunk key: SHA-256 failed") : E8S_OK;
}

int e8s_chunk_key(const uint8_t salt[E8S_SALT_BYTES], const uint8_t fp_id[E8S_KEY_BYTES],
                  const uint8_t *parent, const uint32_t *tokens, size_t n_tokens,
                  uint8_t key_out[E8S_KEY_BYTES]) {
  if (!salt || !fp_id) return store_err(E8S_ERR_INVAL, "chunk key: NULL salt or fingerprint");
  return hash_fields("e8kv.chunk.v1", 0x45, salt, fp_id, parent, tokens, n_tokens, key_out);
}

int e8s_token_digest(const uint8_t *parent, const uint32_t *tokens, size_t n_tokens,
                     uint8_t digest_out[E8S_KEY_BYTES]) {
  return hash_fields("e8kv.tokens.v1", 0x54, NULL, NULL, parent, tokens, n_tokens, digest_out);
}

/* isa-l takes an int length: feed large buffers in 1 GiB pieces. */
uint32_t store_crc32c_update(uint32_t state, const void *buf, uint64_t len) {
  const uint8_t *p = buf;
  while (len > 0) {
    uint64_t m = len > (1ull << 30) ? (1ull << 30) : len;
    state = crc32_iscsi((unsigned char *)p, (int)m, state);
    p += m;
    len -= m;
  }
  return state;
}

uint32_t store_crc32c(const void *buf, uint64_t len) {
  return ~store_crc32c_update(~0u, buf, len);
}

void store_rec_hdr_encode(uint8_t out[E8S_RECORD_HEADER_BYTES], const uint8_t key[32],
                          const store_chunk_val *v) {
  memset(out, 0, E8S_RECORD_HEADER_BYTES);
  put_le32(out, STORE_REC_MAGIC);
  out[4] = STORE_HDR_VERSION;
  out[6] = E8S_RECORD_HEADER_BYTES;
  put_le64(out + 8, v->payload_bytes);
  memcpy(out + 16, key, 32);
  put_le32(out + 48, v->crc);
  put_le32(out + 52, v->n_tokens);
  put_le32(out + 56, v->ns_id);
  put_le32(out + 60, store_crc32c(out, 60));
  memcpy(out + 64, v->fp, 32);
  memcpy(out + 96, v->parent, 32);
  memcpy(out + 128, v->digest, 32);
  put_le64(out + 160, v->raw_bytes);
  put_le64(out + 168, v->created_ns);
  put_le32(out + 188, store_crc32c(out + 64, 124));
}

int store_rec_hdr_decode(const uint8_t in[E8S_RECORD_HEADER_BYTES], uint8_t key[32],
                         store_chunk_val *v) {
  if (get_le32(in) != STORE_REC_MAGIC || in[4] != STORE_HDR_VERSION || in[5] != 0 ||
      in[6] != E8S_RECORD_HEADER_BYTES || in[7] != 0 || get_le32(in + 60) != store_crc32c(in, 60) ||
      get_le32(in + 188) != store_crc32c(in + 64, 124))
    return -1;
  memset(v, 0, sizeof *v);
  memcpy(key, in + 16, 32);
  v->payload_bytes = get_le64(in + 8);
  v->crc = get_le32(in + 48);
  v->n_tokens = get_le32(in + 52);
  v->ns_id = get_le32(in + 56);
  memcpy(v->fp, in + 64, 32);
  memcpy(v->parent, in + 96, 32);
  memcpy(v->digest, in + 128, 32);
  v->raw_bytes = get_le64(in + 160);
  v->created_ns = get_le64(in + 168);
  return 0;
}

uint64_t store_now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

uint64_t store_mono_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000ull + (uint64_t)ts.tv_nsec / 1000000ull;
}
