/*
 * fuzz_kvc_piece.c: libFuzzer target of kvc_piece_parse (clients/c/e8kv_piece.c), the in-place
 * GetChunksResponse parser of the parallel fetch, checked against protobuf-c's unpack of the
 * same bytes. Input: byte 0 picks how the rest is cut into segments (as gRPC's slices would
 * cut a message: 1..255-byte pieces, or one segment), the rest is the message. Aborts when
 *   - ours accepts what protobuf-c refuses (ours may be stricter: it refuses a known field
 *     sent with another wire type than its own, which protobuf-c takes for some types, and
 *     keys / fingerprint ids over 64 bytes), or
 *   - both accept and any field differs, the counted token ids differ, or the located data's
 *     bytes differ.
 * Its corpus (tests/clients/corpus_kvc_piece) is replayed by replay_kvc_piece in make test.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "clients/c/e8kv_int.h"

#define FKP_MAX_SEGS 4096

static void fkp_check(int cond) {
  if (!cond) abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1) return 0;
  uint8_t cut = data[0];
  data++;
  size--;
  static kvc_seg segs[FKP_MAX_SEGS];
  size_t n = 0, at = 0;
  uint32_t x = cut * 2654435761u + 1;
  while (at < size && n < FKP_MAX_SEGS) {
    size_t len = size - at;
    if (cut && n + 1 < FKP_MAX_SEGS) {
      x = x * 1103515245u + 12345u;
      size_t want = 1 + (x >> 16) % (cut == 255 ? 1 : (size_t)cut);
      if (want < len) len = want;
    }
    segs[n].p = data + at;
    segs[n].n = len;
    n++;
    at += len;
  }
  kvc_piece pc;
  int ours = kvc_piece_parse(segs, n, &pc);
  E8kv__V1__GetChunksResponse *m = e8kv__v1__get_chunks_response__unpack(NULL, size, data);
  fkp_check(ours != 0 || m != NULL);
  if (ours == 0) {
    fkp_check(pc.chunk_index == m->chunk_index && pc.start_token == m->start_token &&
              pc.n_tokens == m->n_tokens && pc.layer_begin == m->layer_begin &&
              pc.layer_end == m->layer_end && pc.encoding == (int32_t)m->encoding &&
              pc.dtype == (int32_t)m->dtype && pc.chunk_bytes == m->chunk_bytes &&
              pc.offset == m->offset && pc.last_piece == (m->last_piece != 0) &&
              pc.n_token_ids == m->n_token_ids);
    fkp_check(pc.chunk_key_len == m->chunk_key.len &&
              (!pc.chunk_key_len ||
               memcmp(pc.chunk_key, m->chunk_key.data, pc.chunk_key_len) == 0));
    fkp_check(pc.fingerprint_id_len == m->fingerprint_id.len &&
              (!pc.fingerprint_id_len ||
               memcmp(pc.fingerprint_id, m->fingerprint_id.data, pc.fingerprint_id_len) == 0));
    fkp_check(pc.data_len == m->data.len);
    if (pc.data_len) {
      uint8_t *d = malloc(pc.data_len);
      kvc_piece_copy_data(segs, n, &pc, d);
      fkp_check(memcmp(d, m->data.data, pc.data_len) == 0);
      free(d);
    }
  }
  if (m) e8kv__v1__get_chunks_response__free_unpacked(m, NULL);
  return 0;
}
