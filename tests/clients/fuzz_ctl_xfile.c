/*
 * fuzz_ctl_xfile.c: libFuzzer target of the export-file reader: any bytes
 * either read cleanly to END or fail with an error; never a crash, a leak,
 * or an allocation larger than the input allows.
 */
#include <stdint.h>
#include <stdio.h>

#include "clients/cli/ctl_xfile.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size == 0) return 0;
  FILE *f = fmemopen((void *)data, size, "rb");
  if (!f) return 0;
  ctl_xf x;
  ctl_xf_err e = ctl_xf_read_begin(&x, f);
  while (!e) {
    uint32_t type;
    const uint8_t *p;
    uint64_t n;
    e = ctl_xf_read_next(&x, &type, &p, &n);
    if (e || type == CTL_XF_T_END) break;
    if (n > size) __builtin_trap(); /* a payload longer than the input is impossible */
  }
  ctl_xf_close(&x);
  fclose(f);
  return 0;
}
