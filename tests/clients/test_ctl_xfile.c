/*
 * test_ctl_xfile.c: the export-file container (clients/cli/ctl_xfile.c):
 * round trip, and every kind of damage found and named (bit flips in each
 * part, truncation at every length, junk after END, wrong magic/version,
 * lying lengths), plus the CRC32C check value.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "clients/cli/ctl_xfile.h"

/* Writes a file of three records into a memory buffer; returns its size. */
static size_t make_file(uint8_t **out) {
  char *buf = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&buf, &len);
  assert_non_null(f);
  ctl_xf x;
  assert_int_equal(ctl_xf_write_begin(&x, f), CTL_XF_OK);
  assert_int_equal(ctl_xf_write_record(&x, CTL_XF_T_META, "meta", 4), CTL_XF_OK);
  uint8_t big[5000];
  for (size_t i = 0; i < sizeof big; i++) big[i] = (uint8_t)(i * 7);
  assert_int_equal(ctl_xf_write_record(&x, CTL_XF_T_CHUNK, big, sizeof big), CTL_XF_OK);
  assert_int_equal(ctl_xf_write_record(&x, CTL_XF_T_CHUNK, "", 0), CTL_XF_OK);
  assert_int_equal(ctl_xf_write_end(&x), CTL_XF_OK);
  assert_int_equal(ctl_xf_write_record(&x, CTL_XF_T_CHUNK, "x", 1), CTL_XF_E_FORMAT);
  ctl_xf_close(&x);
  fclose(f);
  *out = (uint8_t *)buf;
  return len;
}

/* Reads a whole file from memory; returns the first error (or OK) and the record count. */
static ctl_xf_err read_all(const uint8_t *p, size_t n, int *records) {
  FILE *f = fmemopen((void *)p, n, "rb");
  if (!f) return CTL_XF_E_IO; /* fmemopen of size 0 */
  ctl_xf x;
  ctl_xf_err e = ctl_xf_read_begin(&x, f);
  *records = 0;
  while (!e) {
    uint32_t type;
    const uint8_t *pl;
    uint64_t len;
    e = ctl_xf_read_next(&x, &type, &pl, &len);
    if (e || type == CTL_XF_T_END) break;
    (*records)++;
  }
  ctl_xf_close(&x);
  fclose(f);
  return e;
}

static void test_crc32c_check_value(void **state) {
  (void)state;
  assert_int_equal(ctl_crc32c(0, "123456789", 9), 0xE3069283u);
  /* chaining equals one pass */
  assert_int_equal(ctl_crc32c(ctl_crc32c(0, "1234", 4), "56789", 5), 0xE3069283u);
}

static void test_round_trip(void **state) {
  (void)state;
  uint8_t *p;
  size_t n = make_file(&p);
  assert_int_equal(n, CTL_XF_HEADER_BYTES + 3 * CTL_XF_RECORD_OVERHEAD + 4 + 5000 +
                          CTL_XF_RECORD_OVERHEAD + CTL_XF_END_PAYLOAD);
  FILE *f = fmemopen(p, n, "rb");
  ctl_xf x;
  assert_int_equal(ctl_xf_read_begin(&x, f), CTL_XF_OK);
  uint32_t type;
  const uint8_t *pl;
  uint64_t len;
  assert_int_equal(ctl_xf_read_next(&x, &type, &pl, &len), CTL_XF_OK);
  assert_int_equal(type, CTL_XF_T_META);
  assert_int_equal(len, 4);
  assert_memory_equal(pl, "meta", 4);
  assert_int_equal(ctl_xf_read_next(&x, &type, &pl, &len), CTL_XF_OK);
  assert_int_equal(type, CTL_XF_T_CHUNK);
  assert_int_equal(len, 5000);
  assert_int_equal(pl[4999], (uint8_t)(4999 * 7));
  assert_int_equal(ctl_xf_read_next(&x, &type, &pl, &len), CTL_XF_OK);
  assert_int_equal(len, 0);
  assert_int_equal(ctl_xf_read_next(&x, &type, &pl, &len), CTL_XF_OK);
  assert_int_equal(type, CTL_XF_T_END);
  assert_int_equal(ctl_xf_read_next(&x, &type, &pl, &len), CTL_XF_E_FORMAT);
  ctl_xf_close(&x);
  fclose(f);
  free(p);
}

static void test_every_bit_flip_detected(void **state) {
  (void)state;
  uint8_t *p;
  size_t n = make_file(&p);
  /* Flip one bit in each byte (a different bit each time): never accepted. */
  for (size_t i = 0; i < n; i++) {
    uint8_t save = p[i];
    p[i] ^= (uint8_t)(1u << (i % 8));
    int recs;
    ctl_xf_err e = read_all(p, n, &recs);
    if (e == CTL_XF_OK) fail_msg("flip at byte %zu of %zu was not detected", i, n);
    p[i] = save;
  }
  free(p);
}

static void test_every_truncation_detected(void **state) {
  (void)state;
  uint8_t *p;
  size_t n = make_file(&p);
  for (size_t cut = 0; cut < n; cut++) {
    int recs;
    ctl_xf_err e = read_all(p, cut, &recs);
    if (e == CTL_XF_OK) fail_msg("truncation to %zu of %zu bytes was not detected", cut, n);
    if (cut > CTL_XF_HEADER_BYTES && e != CTL_XF_E_TRUNCATED)
      fail_msg("truncation to %zu gave %s, not truncated", cut, ctl_xf_err_name(e));
  }
  free(p);
}

static void test_junk_after_end(void **state) {
  (void)state;
  uint8_t *p;
  size_t n = make_file(&p);
  uint8_t *q = malloc(n + 1);
  memcpy(q, p, n);
  q[n] = 0;
  int recs;
  assert_int_equal(read_all(q, n + 1, &recs), CTL_XF_E_FORMAT);
  free(q);
  free(p);
}

static void test_magic_version_lengths(void **state) {
  (void)state;
  uint8_t *p;
  size_t n = make_file(&p);
  int recs;
  p[0] = 'X';
  assert_int_equal(read_all(p, n, &recs), CTL_XF_E_MAGIC);
  p[0] = 'E';
  /* version 2 with a valid header CRC: refused as a version, not a CRC */
  p[8] = 2;
  uint32_t crc = ctl_crc32c(0, p, 12);
  memcpy(p + 12, &crc, 4);
  assert_int_equal(read_all(p, n, &recs), CTL_XF_E_VERSION);
  free(p);
  /* A record claiming 2^40 bytes is refused by the limit, before any allocation. */
  n = make_file(&p);
  p[CTL_XF_HEADER_BYTES + 8 + 5] = 1; /* length byte 5 -> 2^40 + 4 */
  assert_int_equal(read_all(p, n, &recs), CTL_XF_E_LIMIT);
  free(p);
  /* A record claiming 400 MiB (under the limit) in a small file: truncated, not OOM. */
  n = make_file(&p);
  uint64_t big = 400ull << 20;
  memcpy(p + CTL_XF_HEADER_BYTES + 8, &big, 8);
  assert_int_equal(read_all(p, n, &recs), CTL_XF_E_TRUNCATED);
  free(p);
}

static void test_empty_file(void **state) {
  (void)state;
  char *buf = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&buf, &len);
  ctl_xf x;
  assert_int_equal(ctl_xf_write_begin(&x, f), CTL_XF_OK);
  assert_int_equal(ctl_xf_write_end(&x), CTL_XF_OK);
  ctl_xf_close(&x);
  fclose(f);
  int recs = -1;
  assert_int_equal(read_all((uint8_t *)buf, len, &recs), CTL_XF_OK);
  assert_int_equal(recs, 0);
  /* header only, no END */
  assert_int_equal(read_all((uint8_t *)buf, CTL_XF_HEADER_BYTES, &recs), CTL_XF_E_TRUNCATED);
  free(buf);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_crc32c_check_value),
      cmocka_unit_test(test_round_trip),
      cmocka_unit_test(test_every_bit_flip_detected),
      cmocka_unit_test(test_every_truncation_detected),
      cmocka_unit_test(test_junk_after_end),
      cmocka_unit_test(test_magic_version_lengths),
      cmocka_unit_test(test_empty_file),
  };
  return cmocka_run_group_tests_name("ctl_xfile", tests, NULL, NULL);
}
