/* fuzz_kvd_request.c: libFuzzer target on e8kvd's request decoding and validation.
 *
 * The first input byte picks what the rest is fed to, exactly as the daemon receives it:
 *   0 PutChunksRequest (protobuf) -> header: fingerprint resolution, session name, chunk size,
 *     metadata; pieces: token counts and sizes      1 LookupRequest      2 GetChunksRequest
 *   3 CreateSessionRequest (+ metadata blob packing and re-parsing)      4 HealthCheckRequest
 *   5 a stored payload (token trailer split)        6 a session metadata blob
 *   7 an `authorization` metadata value             8 a size flag value ("64M")
 * Built with clang -fsanitize=fuzzer (make fuzz: $(BUILD)/fuzz/kvd_fuzz_request); the same
 * file with -DKVD_FUZZ_REPLAY is a plain program that replays the corpus in `make test`
 * (tests/daemon/corpus/) and with `--seed DIR` writes the seed corpus.
 */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "daemon/kvd_auth.h"
#include "daemon/kvd_config.h"
#include "daemon/kvd_health.h"
#include "daemon/kvd_payload.h"
#include "daemon/kvd_session.h"
#include "grpc/health/v1/health.pb-c.h"

static kvd_auth *g_auth;

static void init_auth(void) {
  if (g_auth) return;
  char path[] = "/tmp/kvd_fuzz_tokens.XXXXXX";
  int fd = mkstemp(path);
  if (fd < 0) abort();
  const char line[] = "fuzz-token-0123456789 fuzzns admin\nother-token-0123456789 otherns\n";
  if (write(fd, line, sizeof line - 1) != (ssize_t)(sizeof line - 1)) abort();
  close(fd);
  char err[256];
  if (kvd_auth_load(path, &g_auth, err, sizeof err) != 0) abort();
  unlink(path);
}

static void meta_roundtrip(uint32_t ct, size_t n, char **k, char **v) {
  kvd_status st;
  uint8_t *blob = NULL;
  size_t len = 0;
  if (kvd_sess_meta_check(n, k, v, &st) != 0) return;
  if (kvd_sess_meta_pack(ct, NULL, n, k, v, &blob, &len, &st) != 0) return;
  E8kv__V1__SessionInfo *si = e8kv__v1__session_info__unpack(NULL, len, blob);
  if (!si || si->chunk_tokens != ct) abort(); /* what we pack must parse back */
  e8kv__v1__session_info__free_unpacked(si, NULL);
  free(blob);
}

static void fuzz_put(const uint8_t *d, size_t n) {
  E8kv__V1__PutChunksRequest *m = e8kv__v1__put_chunks_request__unpack(NULL, n, d);
  if (!m) return;
  kvd_status st;
  if (m->header) {
    const E8kv__V1__PutHeader *h = m->header;
    kvd_fp fp;
    uint32_t ct;
    if (kvd_fp_resolve(h->fingerprint, &fp, &st) == 0) {
      e8kv_fingerprint_pb pb; /* what resolves must convert back */
      e8kv_fingerprint_to_pb(&fp.fp, &pb);
      kvd_fp again;
      if (kvd_fp_resolve(&pb.m, &again, &st) != 0 || memcmp(again.id, fp.id, sizeof fp.id))
        abort();
    }
    kvd_sess_chunk_tokens(h->chunk_tokens, &ct, &st);
    kvd_sess_name_check(h->session, &st);
    char **k = calloc(h->n_session_metadata + 1, sizeof *k);
    char **v = calloc(h->n_session_metadata + 1, sizeof *v);
    for (size_t i = 0; i < h->n_session_metadata; i++) {
      k[i] = h->session_metadata[i]->key;
      v[i] = h->session_metadata[i]->value;
    }
    meta_roundtrip(h->chunk_tokens, h->n_session_metadata, k, v);
    free(k);
    free(v);
  }
  size_t total = 0;
  for (size_t i = 0; i < m->n_pieces; i++) total += m->pieces[i]->data.len + m->pieces[i]->n_token_ids;
  (void)total;
  e8kv__v1__put_chunks_request__free_unpacked(m, NULL);
}

static void fuzz_one(uint8_t kind, const uint8_t *d, size_t n) {
  kvd_status st;
  kvd_fp fp;
  char buf[512];
  switch (kind % 9) {
    case 0: fuzz_put(d, n); break;
    case 1: {
      E8kv__V1__LookupRequest *m = e8kv__v1__lookup_request__unpack(NULL, n, d);
      if (m) {
        kvd_fp_resolve(m->fingerprint, &fp, &st);
        e8kv__v1__lookup_request__free_unpacked(m, NULL);
      }
      break;
    }
    case 2: {
      E8kv__V1__GetChunksRequest *m = e8kv__v1__get_chunks_request__unpack(NULL, n, d);
      if (m) {
        if (m->selection_case == E8KV__V1__GET_CHUNKS_REQUEST__SELECTION_RANGE)
          kvd_sess_name_check(m->range->session, &st);
        e8kv__v1__get_chunks_request__free_unpacked(m, NULL);
      }
      break;
    }
    case 3: {
      E8kv__V1__CreateSessionRequest *m = e8kv__v1__create_session_request__unpack(NULL, n, d);
      if (m) {
        kvd_fp_resolve(m->fingerprint, &fp, &st);
        kvd_sess_name_check(m->name, &st);
        char **k = calloc(m->n_metadata + 1, sizeof *k), **v = calloc(m->n_metadata + 1, sizeof *v);
        for (size_t i = 0; i < m->n_metadata; i++) {
          k[i] = m->metadata[i]->key;
          v[i] = m->metadata[i]->value;
        }
        meta_roundtrip(m->chunk_tokens, m->n_metadata, k, v);
        free(k);
        free(v);
        e8kv__v1__create_session_request__free_unpacked(m, NULL);
      }
      break;
    }
    case 4: kvd_health_parse(d, n, buf, sizeof buf, &st); break;
    case 5: {
      size_t cb;
      const uint8_t *tl;
      uint32_t nt;
      if (kvd_payload_split(d, n, &cb, &tl, &nt) == 0 && (cb + kvd_trailer_size(nt) != n))
        abort();
      break;
    }
    case 6: {
      E8kv__V1__SessionInfo *m = e8kv__v1__session_info__unpack(NULL, n, d);
      if (m) e8kv__v1__session_info__free_unpacked(m, NULL);
      break;
    }
    case 7: {
      init_auth();
      kvd_principal p;
      kvd_auth_check(g_auth, (const char *)d, n, &p, &st);
      break;
    }
    case 8: {
      uint64_t v;
      snprintf(buf, sizeof buf, "%.*s", (int)(n < 64 ? n : 64), (const char *)d);
      kvd_config_parse_size(buf, &v);
      break;
    }
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size >= 1) fuzz_one(data[0], data + 1, size - 1);
  return 0;
}

#ifdef KVD_FUZZ_REPLAY
static int write_seed(const char *dir, const char *name, uint8_t kind, const ProtobufCMessage *m,
                      const void *raw, size_t raw_len) {
  char path[1024];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  FILE *f = fopen(path, "wb");
  if (!f) return -1;
  fputc(kind, f);
  if (m) {
    size_t n = protobuf_c_message_get_packed_size(m);
    uint8_t *b = malloc(n + 1);
    protobuf_c_message_pack(m, b);
    fwrite(b, 1, n, f);
    free(b);
  } else {
    fwrite(raw, 1, raw_len, f);
  }
  return fclose(f);
}

static int seed(const char *dir) {
  E8kv__V1__ModelFingerprint fp;
  E8kv__V1__RopeConfig rope;
  E8kv__V1__CodecConfig codec;
  e8kv__v1__model_fingerprint__init(&fp);
  e8kv__v1__rope_config__init(&rope);
  e8kv__v1__codec_config__init(&codec);
  fp.model_id = "HuggingFaceTB/SmolLM2-135M-Instruct";
  fp.n_layers = 30;
  fp.n_kv_heads = 3;
  fp.head_dim = 64;
  fp.source_dtype = E8KV__V1__DTYPE__DTYPE_BF16;
  rope.theta = 100000;
  rope.layout = E8KV__V1__ROPE_LAYOUT__ROPE_LAYOUT_SPLIT_HALF;
  codec.preset = "K4V2";
  codec.sink_tokens = 4;
  uint32_t prot[] = {0, 29};
  codec.protected_layers = prot;
  codec.n_protected_layers = 2;
  fp.rope = &rope;
  fp.codec = &codec;
  E8kv__V1__PutHeader h;
  e8kv__v1__put_header__init(&h);
  h.fingerprint = &fp;
  h.chunk_tokens = 256;
  h.encoding = E8KV__V1__ENCODING__ENCODING_RAW;
  h.raw_dtype = E8KV__V1__DTYPE__DTYPE_FP16;
  h.session = "chat/42";
  h.create_session = 1;
  E8kv__V1__PutHeader__SessionMetadataEntry me, *mp = &me;
  e8kv__v1__put_header__session_metadata_entry__init(&me);
  me.key = "user";
  me.value = "alice";
  h.session_metadata = &mp;
  h.n_session_metadata = 1;
  E8kv__V1__ChunkPiece pc, *pp = &pc;
  e8kv__v1__chunk_piece__init(&pc);
  uint32_t tok[] = {1, 2, 3, 4};
  pc.token_ids = tok;
  pc.n_token_ids = 4;
  uint8_t bytes[16] = {0};
  pc.data = (ProtobufCBinaryData){16, bytes};
  E8kv__V1__PutChunksRequest pr;
  e8kv__v1__put_chunks_request__init(&pr);
  pr.header = &h;
  pr.pieces = &pp;
  pr.n_pieces = 1;
  int rc = write_seed(dir, "put_header", 0, &pr.base, NULL, 0);
  rope.scaling = E8KV__V1__ROPE_SCALING__ROPE_SCALING_LLAMA3;
  rope.factor = 8;
  rope.low_freq_factor = 1;
  rope.high_freq_factor = 4;
  rope.original_max_position_embeddings = 8192;
  rc |= write_seed(dir, "put_llama3", 0, &pr.base, NULL, 0);
  E8kv__V1__LookupRequest lq;
  e8kv__v1__lookup_request__init(&lq);
  lq.fingerprint = &fp;
  lq.token_ids = tok;
  lq.n_token_ids = 4;
  rc |= write_seed(dir, "lookup", 1, &lq.base, NULL, 0);
  E8kv__V1__GetChunksRequest gq;
  E8kv__V1__SessionRange sr;
  e8kv__v1__get_chunks_request__init(&gq);
  e8kv__v1__session_range__init(&sr);
  sr.session = "chat/42";
  sr.end_token = 512;
  gq.selection_case = E8KV__V1__GET_CHUNKS_REQUEST__SELECTION_RANGE;
  gq.range = &sr;
  gq.encoding = E8KV__V1__ENCODING__ENCODING_RAW;
  rc |= write_seed(dir, "get_range", 2, &gq.base, NULL, 0);
  E8kv__V1__CreateSessionRequest cq;
  e8kv__v1__create_session_request__init(&cq);
  cq.name = "s";
  cq.fingerprint = &fp;
  rc |= write_seed(dir, "create", 3, &cq.base, NULL, 0);
  Grpc__Health__V1__HealthCheckRequest hq;
  grpc__health__v1__health_check_request__init(&hq);
  hq.service = "e8kv.v1.KVStore";
  rc |= write_seed(dir, "health", 4, &hq.base, NULL, 0);
  uint8_t payload[32 + 16];
  memset(payload, 7, 32);
  kvd_trailer_write(payload + 32, tok, 2);
  rc |= write_seed(dir, "payload", 5, NULL, payload, 32 + kvd_trailer_size(2));
  rc |= write_seed(dir, "auth", 7, NULL, "Bearer fuzz-token-0123456789", 28);
  rc |= write_seed(dir, "size", 8, NULL, "64MiB", 5);
  return rc ? 1 : 0;
}

static int replay_file(const char *path) {
  FILE *f = fopen(path, "rb");
  if (!f) return -1;
  uint8_t *b = malloc(1 << 20);
  size_t n = fread(b, 1, 1 << 20, f);
  fclose(f);
  LLVMFuzzerTestOneInput(b, n);
  free(b);
  return 0;
}

int main(int argc, char **argv) {
  if (argc == 3 && strcmp(argv[1], "--seed") == 0) return seed(argv[2]);
  size_t files = 0;
  for (int i = 1; i < argc; i++) {
    DIR *dir = opendir(argv[i]);
    if (!dir) {
      if (replay_file(argv[i]) != 0) { fprintf(stderr, "cannot read %s\n", argv[i]); return 1; }
      files++;
      continue;
    }
    struct dirent *e;
    while ((e = readdir(dir))) {
      if (e->d_name[0] == '.') continue;
      char p[2048];
      snprintf(p, sizeof p, "%s/%s", argv[i], e->d_name);
      if (replay_file(p) != 0) { fprintf(stderr, "cannot read %s\n", p); closedir(dir); return 1; }
      files++;
    }
    closedir(dir);
  }
  if (files == 0) { fprintf(stderr, "kvd_fuzz_replay: no corpus files\n"); return 1; }
  printf("kvd_fuzz_replay: %zu corpus inputs replayed without a crash\n", files);
  kvd_auth_free(g_auth);
  return 0;
}
#endif
