/* kvd_lease.c: opaque, namespace-bound Lookup lease tokens (see kvd_lease.h). */
#include "daemon/kvd_lease.h"

#include <pthread.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

static uint8_t lease_key[32];
static int lease_key_ok;
static pthread_once_t lease_once = PTHREAD_ONCE_INIT;

static void lease_key_init(void) { lease_key_ok = RAND_bytes(lease_key, sizeof lease_key) == 1; }

static int lease_mac(uint32_t ns, uint64_t id, uint8_t mac[8]) {
  pthread_once(&lease_once, lease_key_init);
  if (!lease_key_ok) return -1;
  uint8_t msg[12], out[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  for (int i = 0; i < 4; i++) msg[i] = (uint8_t)(ns >> (8 * i));
  for (int i = 0; i < 8; i++) msg[4 + i] = (uint8_t)(id >> (8 * i));
  if (!HMAC(EVP_sha256(), lease_key, sizeof lease_key, msg, sizeof msg, out, &n) || n < 8)
    return -1;
  memcpy(mac, out, 8);
  return 0;
}

int kvd_lease_token(uint32_t ns, uint64_t lease_id, uint8_t out[KVD_LEASE_TOKEN_BYTES]) {
  for (int i = 0; i < 8; i++) out[i] = (uint8_t)(lease_id >> (8 * i));
  return lease_mac(ns, lease_id, out + 8);
}

int kvd_lease_parse(uint32_t ns, const uint8_t *token, size_t len, uint64_t *lease_id) {
  if (!token || len != KVD_LEASE_TOKEN_BYTES) return -1;
  uint64_t id = 0;
  for (int i = 0; i < 8; i++) id |= (uint64_t)token[i] << (8 * i);
  uint8_t mac[8];
  if (lease_mac(ns, id, mac) != 0 || CRYPTO_memcmp(mac, token + 8, 8) != 0) return -1;
  *lease_id = id;
  return 0;
}
