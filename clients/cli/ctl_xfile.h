/*
 * ctl_xfile.h: the e8kv export file container (format in clients/cli/EXPORT.md).
 *
 * A portable single file holding one session: a 16-byte header (magic, version,
 * CRC32C), then typed records (type, length, payload, CRC32C of all three),
 * then an END record carrying the record count, the payload byte count and the
 * SHA-256 of every byte before it. All integers little-endian. The container
 * knows nothing of the payloads; ctl_export.c fills them (protobuf messages of
 * e8kv.v1). The reader checks every CRC, the limits, the END digest and that
 * nothing follows END, so truncation, corruption and appended junk are all
 * reported, never half-imported.
 *
 * Not thread-safe; one ctl_xf per file.
 */
#ifndef CTL_XFILE_H
#define CTL_XFILE_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <openssl/evp.h>

#define CTL_XF_MAGIC "E8KVXPRT"
#define CTL_XF_VERSION 1
#define CTL_XF_HEADER_BYTES 16
#define CTL_XF_RECORD_OVERHEAD 20           /* type u32, reserved u32, length u64, crc u32 */
#define CTL_XF_MAX_PAYLOAD (512ull << 20)   /* one record's payload: at most 512 MiB */
#define CTL_XF_MAX_RECORDS (1ull << 24)     /* records in one file */
#define CTL_XF_END_PAYLOAD 48               /* records u64, payload bytes u64, sha256[32] */

enum ctl_xf_type {
  CTL_XF_T_META = 1,   /* session and model fingerprint (one, first) */
  CTL_XF_T_CHUNK = 2,  /* one chunk: token ids and encoded frames (in order) */
  CTL_XF_T_END = 0x7fffffff
};

typedef enum ctl_xf_err {
  CTL_XF_OK = 0,
  CTL_XF_E_IO,        /* read or write failed (errno in the message) */
  CTL_XF_E_MAGIC,     /* not an e8kv export file */
  CTL_XF_E_VERSION,   /* a version this build does not read */
  CTL_XF_E_CRC,       /* a header or record CRC32C mismatch */
  CTL_XF_E_TRUNCATED, /* the file ends inside a record or before END */
  CTL_XF_E_LIMIT,     /* a length or count over the limits above */
  CTL_XF_E_DIGEST,    /* END's counts or SHA-256 disagree with the file */
  CTL_XF_E_FORMAT,    /* anything else malformed (bad reserved field, junk after END) */
  CTL_XF_E_NOMEM
} ctl_xf_err;

typedef struct ctl_xf {
  FILE *f;
  EVP_MD_CTX *sha;      /* SHA-256 of every byte so far */
  uint64_t records;     /* records written/read, END excluded */
  uint64_t payload_bytes;
  uint64_t file_bytes;  /* bytes written/read so far */
  int ended;            /* END written / read */
  uint8_t *buf;         /* reader: payload of the last record (owned) */
  size_t cap;
  char msg[256];        /* message of the last error */
} ctl_xf;

const char *ctl_xf_err_name(ctl_xf_err e);

/* Writer: begin writes the header; add writes one record; end writes END and
 * flushes. The FILE stays the caller's (opened "wb", closed by the caller). */
ctl_xf_err ctl_xf_write_begin(ctl_xf *x, FILE *f);
ctl_xf_err ctl_xf_write_record(ctl_xf *x, uint32_t type, const void *payload, uint64_t len);
ctl_xf_err ctl_xf_write_end(ctl_xf *x);

/* Reader: begin checks the header; next returns the next record (its payload
 * stays valid until the next call) or, after END was read and checked, returns
 * CTL_XF_OK with *type = CTL_XF_T_END. */
ctl_xf_err ctl_xf_read_begin(ctl_xf *x, FILE *f);
ctl_xf_err ctl_xf_read_next(ctl_xf *x, uint32_t *type, const uint8_t **payload, uint64_t *len);

/* Frees what the writer or reader holds (not the FILE). */
void ctl_xf_close(ctl_xf *x);

/* CRC32C (Castagnoli) of a buffer of any length (isa-l, fed in 1 GiB pieces). */
uint32_t ctl_crc32c(uint32_t crc, const void *buf, uint64_t len);

#endif /* CTL_XFILE_H */
