/*
 * ctl_xfile.c: writer and reader of the e8kv export container (EXPORT.md).
 * The SHA-256 of END covers header and all records, so the reader hashes
 * every byte it consumes; CRCs catch a damaged record where it is.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include <isa-l/crc.h>

#include "clients/cli/ctl_xfile.h"

uint32_t ctl_crc32c(uint32_t crc, const void *buf, uint64_t len) {
  const unsigned char *p = buf;
  crc = ~crc;
  while (len) {
    int n = len > (1u << 30) ? (1 << 30) : (int)len;
    crc = crc32_iscsi((unsigned char *)p, n, crc);
    p += n;
    len -= (uint64_t)n;
  }
  return ~crc;
}

const char *ctl_xf_err_name(ctl_xf_err e) {
  static const char *const names[] = {"ok", "io", "bad magic", "unsupported version",
                                      "CRC mismatch", "truncated", "over limit",
                                      "digest mismatch", "malformed", "out of memory"};
  return (unsigned)e < sizeof names / sizeof names[0] ? names[e] : "?";
}

static ctl_xf_err ctl_xf_fail(ctl_xf *x, ctl_xf_err e, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static ctl_xf_err ctl_xf_fail(ctl_xf *x, ctl_xf_err e, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(x->msg, sizeof x->msg, fmt, ap);
  va_end(ap);
  return e;
}

static void ctl_put32(uint8_t *p, uint32_t v) {
  for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static void ctl_put64(uint8_t *p, uint64_t v) {
  for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static uint32_t ctl_get32(const uint8_t *p) {
  uint32_t v = 0;
  for (int i = 3; i >= 0; i--) v = (v << 8) | p[i];
  return v;
}
static uint64_t ctl_get64(const uint8_t *p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
  return v;
}

static ctl_xf_err ctl_xf_init(ctl_xf *x, FILE *f) {
  memset(x, 0, sizeof *x);
  x->f = f;
  x->sha = EVP_MD_CTX_new();
  if (!x->sha || EVP_DigestInit_ex(x->sha, EVP_sha256(), NULL) != 1)
    return ctl_xf_fail(x, CTL_XF_E_NOMEM, "cannot set up SHA-256");
  return CTL_XF_OK;
}

static ctl_xf_err ctl_xf_put(ctl_xf *x, const void *p, uint64_t n) {
  if (n && fwrite(p, 1, n, x->f) != n)
    return ctl_xf_fail(x, CTL_XF_E_IO, "write failed: %s", strerror(errno));
  EVP_DigestUpdate(x->sha, p, n);
  x->file_bytes += n;
  return CTL_XF_OK;
}

ctl_xf_err ctl_xf_write_begin(ctl_xf *x, FILE *f) {
  ctl_xf_err e = ctl_xf_init(x, f);
  if (e) return e;
  uint8_t h[CTL_XF_HEADER_BYTES];
  memcpy(h, CTL_XF_MAGIC, 8);
  h[8] = CTL_XF_VERSION & 0xff;
  h[9] = CTL_XF_VERSION >> 8;
  h[10] = h[11] = 0; /* flags */
  ctl_put32(h + 12, ctl_crc32c(0, h, 12));
  return ctl_xf_put(x, h, sizeof h);
}

ctl_xf_err ctl_xf_write_record(ctl_xf *x, uint32_t type, const void *payload, uint64_t len) {
  if (x->ended || type == CTL_XF_T_END)
    return ctl_xf_fail(x, CTL_XF_E_FORMAT, "record after END");
  if (len > CTL_XF_MAX_PAYLOAD || x->records >= CTL_XF_MAX_RECORDS)
    return ctl_xf_fail(x, CTL_XF_E_LIMIT, "record of %llu bytes (#%llu) over the limits",
                       (unsigned long long)len, (unsigned long long)x->records);
  uint8_t h[16], t[4];
  ctl_put32(h, type);
  ctl_put32(h + 4, 0);
  ctl_put64(h + 8, len);
  ctl_put32(t, ctl_crc32c(ctl_crc32c(0, h, sizeof h), payload, len));
  ctl_xf_err e;
  if ((e = ctl_xf_put(x, h, sizeof h)) || (e = ctl_xf_put(x, payload, len)) ||
      (e = ctl_xf_put(x, t, sizeof t)))
    return e;
  x->records++;
  x->payload_bytes += len;
  return CTL_XF_OK;
}

ctl_xf_err ctl_xf_write_end(ctl_xf *x) {
  if (x->ended) return ctl_xf_fail(x, CTL_XF_E_FORMAT, "END written twice");
  uint8_t h[16], p[CTL_XF_END_PAYLOAD], t[4];
  unsigned int dl = 0;
  ctl_put32(h, CTL_XF_T_END);
  ctl_put32(h + 4, 0);
  ctl_put64(h + 8, CTL_XF_END_PAYLOAD);
  ctl_put64(p, x->records);
  ctl_put64(p + 8, x->payload_bytes);
  EVP_DigestFinal_ex(x->sha, p + 16, &dl);
  ctl_put32(t, ctl_crc32c(ctl_crc32c(0, h, sizeof h), p, sizeof p));
  x->ended = 1;
  if (fwrite(h, 1, 16, x->f) != 16 || fwrite(p, 1, sizeof p, x->f) != sizeof p ||
      fwrite(t, 1, 4, x->f) != 4 || fflush(x->f) != 0)
    return ctl_xf_fail(x, CTL_XF_E_IO, "write failed: %s", strerror(errno));
  x->file_bytes += 16 + sizeof p + 4;
  return CTL_XF_OK;
}

/* Reads exactly n bytes; hash: add them to the running SHA-256. */
static ctl_xf_err ctl_xf_get(ctl_xf *x, void *p, uint64_t n, int hash, const char *what) {
  size_t got = n ? fread(p, 1, n, x->f) : 0;
  if (got != n) {
    if (ferror(x->f)) return ctl_xf_fail(x, CTL_XF_E_IO, "read failed: %s", strerror(errno));
    return ctl_xf_fail(x, CTL_XF_E_TRUNCATED,
                       "file ends inside %s at byte %llu (%zu of %llu bytes there)", what,
                       (unsigned long long)(x->file_bytes + got), got, (unsigned long long)n);
  }
  if (hash) EVP_DigestUpdate(x->sha, p, n);
  x->file_bytes += n;
  return CTL_XF_OK;
}

ctl_xf_err ctl_xf_read_begin(ctl_xf *x, FILE *f) {
  ctl_xf_err e = ctl_xf_init(x, f);
  if (e) return e;
  uint8_t h[CTL_XF_HEADER_BYTES];
  if ((e = ctl_xf_get(x, h, sizeof h, 1, "the header"))) return e;
  if (memcmp(h, CTL_XF_MAGIC, 8) != 0)
    return ctl_xf_fail(x, CTL_XF_E_MAGIC, "not an e8kv export file (magic is not %s)",
                       CTL_XF_MAGIC);
  if (ctl_get32(h + 12) != ctl_crc32c(0, h, 12))
    return ctl_xf_fail(x, CTL_XF_E_CRC, "header CRC mismatch");
  unsigned ver = h[8] | (unsigned)h[9] << 8, flags = h[10] | (unsigned)h[11] << 8;
  if (ver != CTL_XF_VERSION)
    return ctl_xf_fail(x, CTL_XF_E_VERSION, "export format version %u; this build reads %d",
                       ver, CTL_XF_VERSION);
  if (flags) return ctl_xf_fail(x, CTL_XF_E_FORMAT, "unknown header flags 0x%x", flags);
  return CTL_XF_OK;
}

static ctl_xf_err ctl_xf_check_end(ctl_xf *x, const uint8_t *p) {
  uint8_t digest[32];
  unsigned int dl = 0;
  EVP_DigestFinal_ex(x->sha, digest, &dl);
  if (ctl_get64(p) != x->records || ctl_get64(p + 8) != x->payload_bytes)
    return ctl_xf_fail(x, CTL_XF_E_DIGEST,
                       "END says %llu records / %llu bytes, the file has %llu / %llu",
                       (unsigned long long)ctl_get64(p), (unsigned long long)ctl_get64(p + 8),
                       (unsigned long long)x->records, (unsigned long long)x->payload_bytes);
  if (memcmp(digest, p + 16, 32) != 0)
    return ctl_xf_fail(x, CTL_XF_E_DIGEST, "SHA-256 of the file does not match END");
  uint8_t extra;
  if (fread(&extra, 1, 1, x->f) == 1)
    return ctl_xf_fail(x, CTL_XF_E_FORMAT, "bytes after END (at byte %llu)",
                       (unsigned long long)x->file_bytes);
  x->ended = 1;
  return CTL_XF_OK;
}

ctl_xf_err ctl_xf_read_next(ctl_xf *x, uint32_t *type, const uint8_t **payload, uint64_t *len) {
  *payload = NULL;
  *len = 0;
  if (x->ended) return ctl_xf_fail(x, CTL_XF_E_FORMAT, "read after END");
  uint8_t h[16], t[4];
  uint64_t at = x->file_bytes;
  ctl_xf_err e = ctl_xf_get(x, h, sizeof h, 0, "a record header");
  if (e == CTL_XF_E_TRUNCATED && x->file_bytes == at && feof(x->f))
    return ctl_xf_fail(x, CTL_XF_E_TRUNCATED, "file ends after %llu records without END",
                       (unsigned long long)x->records);
  if (e) return e;
  *type = ctl_get32(h);
  uint64_t n = ctl_get64(h + 8);
  int is_end = *type == CTL_XF_T_END;
  if (ctl_get32(h + 4) != 0)
    return ctl_xf_fail(x, CTL_XF_E_FORMAT, "record at byte %llu: reserved field not 0",
                       (unsigned long long)at);
  if (is_end ? n != CTL_XF_END_PAYLOAD : n > CTL_XF_MAX_PAYLOAD)
    return ctl_xf_fail(x, CTL_XF_E_LIMIT, "record at byte %llu: length %llu over the limit",
                       (unsigned long long)at, (unsigned long long)n);
  if (!is_end && x->records >= CTL_XF_MAX_RECORDS)
    return ctl_xf_fail(x, CTL_XF_E_LIMIT, "more than %llu records",
                       (unsigned long long)CTL_XF_MAX_RECORDS);
  if (!is_end) EVP_DigestUpdate(x->sha, h, sizeof h);
  /* Grow the buffer as bytes arrive, so a lying length costs no more memory than
   * the file really has. */
  for (uint64_t got = 0; got < n;) {
    uint64_t piece = n - got < (16u << 20) ? n - got : (16u << 20);
    if (got + piece > x->cap) {
      uint8_t *b = realloc(x->buf, got + piece);
      if (!b) return ctl_xf_fail(x, CTL_XF_E_NOMEM, "no memory for a %llu-byte record",
                                 (unsigned long long)n);
      x->buf = b;
      x->cap = got + piece;
    }
    if ((e = ctl_xf_get(x, x->buf + got, piece, !is_end, "a record payload"))) return e;
    got += piece;
  }
  if ((e = ctl_xf_get(x, t, 4, !is_end, "a record CRC"))) return e;
  if (ctl_get32(t) != ctl_crc32c(ctl_crc32c(0, h, sizeof h), x->buf, n))
    return ctl_xf_fail(x, CTL_XF_E_CRC, "record %llu (type %u, at byte %llu): CRC mismatch",
                       (unsigned long long)x->records, *type, (unsigned long long)at);
  if (is_end) return ctl_xf_check_end(x, x->buf);
  x->records++;
  x->payload_bytes += n;
  *payload = x->buf;
  *len = n;
  return CTL_XF_OK;
}

void ctl_xf_close(ctl_xf *x) {
  EVP_MD_CTX_free(x->sha);
  free(x->buf);
  x->sha = NULL;
  x->buf = NULL;
  x->cap = 0;
}
