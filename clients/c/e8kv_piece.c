/*
 * e8kv_piece.c: a GetChunksResponse parsed where it lies (kvc_piece_parse, e8kv_int.h).
 *
 * The parallel fetch moves hundreds of MB; protobuf-c's unpack needs the message in one
 * buffer (a copy out of gRPC's slices) and copies the data field again into its own
 * allocation, before the fetch copies it to the chunk's place. This parser reads the wire
 * format (protobuf encoding: varint tags, wire types 0/1/2/5) across the segments gRPC
 * received, copies the small fields (key and fingerprint id: at most 64 bytes each) and only
 * locates the data field, which kvc_piece_copy_data then copies once, to its destination.
 *
 * Whatever it accepts, protobuf-c accepts with the same values (a later occurrence of a field
 * replaces an earlier one; uint32 fields keep the low 32 bits of the varint; bool is varint
 * != 0; token_ids packed or not; unknown fields skipped). It is stricter in two ways: a known
 * field with another wire type than its own is refused (protobuf-c takes e.g. a bool sent as
 * fixed64), and so is a chunk_key or fingerprint_id over 64 bytes (the API says 32).
 * tests/clients/fuzz_kvc_piece.c checks this against protobuf-c, on inputs cut into random
 * segments.
 */
#include <string.h>

#include "clients/c/e8kv_int.h"

typedef struct kvp_cur {
  const kvc_seg *s;
  size_t ns, i, off; /* current segment and offset in it */
  size_t left;       /* bytes from here to the end of the message */
} kvp_cur;

static int kvp_byte(kvp_cur *c, uint8_t *b) {
  while (c->i < c->ns && c->off == c->s[c->i].n) {
    c->i++;
    c->off = 0;
  }
  if (!c->left || c->i == c->ns) return -1;
  *b = c->s[c->i].p[c->off++];
  c->left--;
  return 0;
}

/* A varint of at most max_bytes bytes (10, as protobuf-c). */
static int kvp_varint(kvp_cur *c, uint64_t *v, int max_bytes) {
  uint64_t x = 0;
  for (int k = 0; k < max_bytes; k++) {
    uint8_t b;
    if (kvp_byte(c, &b)) return -1;
    if (k < 10) x |= (uint64_t)(b & 0x7f) << (7 * k < 64 ? 7 * k : 63);
    if (!(b & 0x80)) {
      *v = x;
      return 0;
    }
  }
  return -1;
}

/* The length of a length-delimited field: a varint of at most 5 bytes, as protobuf-c's
 * scan_length_prefix reads it (it refuses a longer one, e.g. 0 written in 7 bytes). */
static int kvp_len(kvp_cur *c, uint64_t *v) { return kvp_varint(c, v, 5); }

static int kvp_skip(kvp_cur *c, uint64_t n) {
  if (n > c->left) return -1;
  c->left -= n;
  while (n) {
    size_t have = c->s[c->i].n - c->off;
    if (have > n) have = (size_t)n;
    c->off += have;
    n -= have;
    if (n) {
      c->i++;
      c->off = 0;
    }
  }
  return 0;
}

static int kvp_read(kvp_cur *c, uint8_t *dst, size_t n) {
  for (size_t k = 0; k < n; k++)
    if (kvp_byte(c, dst + k)) return -1;
  return 0;
}

/* Where the cursor is, normalised to a segment with bytes left (for the data field). */
static void kvp_here(kvp_cur *c, size_t *seg, size_t *off) {
  while (c->i < c->ns && c->off == c->s[c->i].n) {
    c->i++;
    c->off = 0;
  }
  *seg = c->i;
  *off = c->off;
}

/* token_ids (field 14) packed: a length-delimited run of varints, counted. */
static int kvp_packed_ids(kvp_cur *c, uint64_t len, size_t *count) {
  if (len > c->left) return -1;
  kvp_cur sub = *c;
  sub.left = (size_t)len;
  while (sub.left) {
    uint64_t v;
    if (kvp_varint(&sub, &v, 10)) return -1;
    (*count)++;
  }
  return kvp_skip(c, len);
}

enum { KVP_VARINT = 0, KVP_FIXED64 = 1, KVP_LEN = 2, KVP_FIXED32 = 5 };

/* A length-delimited bytes field of at most 64 bytes into dst. */
static int kvp_small_bytes(kvp_cur *c, uint8_t *dst, size_t *len) {
  uint64_t n;
  if (kvp_len(c, &n) || n > 64 || n > c->left) return -1;
  *len = (size_t)n;
  return kvp_read(c, dst, (size_t)n);
}

static int kvp_field(kvp_cur *c, uint32_t field, int wt, kvc_piece *pc) {
  uint64_t v;
  if (field == 2 || field == 11 || field == 13) { /* bytes */
    if (wt != KVP_LEN) return -1;
    if (field == 2) return kvp_small_bytes(c, pc->chunk_key, &pc->chunk_key_len);
    if (field == 13) return kvp_small_bytes(c, pc->fingerprint_id, &pc->fingerprint_id_len);
    if (kvp_len(c, &v) || v > c->left) return -1;
    pc->data_len = (size_t)v;
    kvp_here(c, &pc->data_seg, &pc->data_off);
    return kvp_skip(c, v);
  }
  if (field == 14) { /* repeated uint32: packed, or one varint per occurrence */
    if (wt == KVP_LEN) {
      if (kvp_len(c, &v)) return -1;
      return kvp_packed_ids(c, v, &pc->n_token_ids);
    }
    if (wt != KVP_VARINT || kvp_varint(c, &v, 10)) return -1;
    pc->n_token_ids++;
    return 0;
  }
  if (field >= 1 && field <= 12) { /* the scalars: all varints */
    if (wt != KVP_VARINT || kvp_varint(c, &v, 10)) return -1;
    switch (field) {
      case 1: pc->chunk_index = (uint32_t)v; break;
      case 3: pc->start_token = v; break;
      case 4: pc->n_tokens = (uint32_t)v; break;
      case 5: pc->layer_begin = (uint32_t)v; break;
      case 6: pc->layer_end = (uint32_t)v; break;
      case 7: pc->encoding = (int32_t)(uint32_t)v; break;
      case 8: pc->dtype = (int32_t)(uint32_t)v; break;
      case 9: pc->chunk_bytes = v; break;
      case 10: pc->offset = v; break;
      default: pc->last_piece = v != 0; break; /* 12 */
    }
    return 0;
  }
  switch (wt) { /* an unknown field: skipped */
    case KVP_VARINT: return kvp_varint(c, &v, 10);
    case KVP_FIXED64: return kvp_skip(c, 8);
    case KVP_FIXED32: return kvp_skip(c, 4);
    case KVP_LEN: return kvp_len(c, &v) || kvp_skip(c, v) ? -1 : 0;
    default: return -1; /* groups (3, 4) and 6, 7 */
  }
}

/* A tag as protobuf-c reads one: at most 5 bytes, the field number in 32 bits (higher bits
 * dropped), a first byte whose field bits are all 0 refused. */
static int kvp_tag(kvp_cur *c, uint32_t *field, int *wt) {
  uint8_t b;
  if (kvp_byte(c, &b) || (b & 0xf8) == 0) return -1;
  *wt = b & 7;
  uint32_t f = (uint32_t)(b & 0x7f) >> 3;
  unsigned shift = 4;
  for (int k = 1; b & 0x80; k++) {
    if (k == 5 || kvp_byte(c, &b)) return -1;
    f |= shift < 32 ? (uint32_t)(b & 0x7f) << shift : 0;
    shift += 7;
  }
  *field = f;
  return 0;
}

int kvc_piece_parse(const kvc_seg *segs, size_t n_segs, kvc_piece *pc) {
  memset(pc, 0, sizeof *pc);
  kvp_cur c = {segs, n_segs, 0, 0, 0};
  for (size_t i = 0; i < n_segs; i++) c.left += segs[i].n;
  while (c.left) {
    uint32_t field;
    int wt;
    if (kvp_tag(&c, &field, &wt) || kvp_field(&c, field, wt, pc)) return -1;
  }
  return 0;
}

void kvc_piece_copy_data(const kvc_seg *segs, size_t n_segs, const kvc_piece *pc,
                         uint8_t *dst) {
  size_t i = pc->data_seg, off = pc->data_off, n = pc->data_len;
  while (n && i < n_segs) {
    size_t have = segs[i].n - off;
    if (have > n) have = n;
    memcpy(dst, segs[i].p + off, have);
    dst += have;
    n -= have;
    i++;
    off = 0;
  }
}
