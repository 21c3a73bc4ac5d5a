/*
 * replay_ctl_xfile.c: runs the export-reader fuzz target's corpus as a
 * regression test (no libFuzzer needed) and checks the seeds' verdicts: files
 * named valid-* (written by make_xfile_seeds.py from EXPORT.md alone) must read
 * cleanly to END, every other file must be refused. Usage: replay DIR.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clients/cli/ctl_xfile.h"
#include "tests/clients/corpus_files.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int read_verdict(const char *path, char *msg, size_t cap) {
  FILE *f = fopen(path, "rb");
  if (!f) return -1;
  ctl_xf x;
  ctl_xf_err e = ctl_xf_read_begin(&x, f);
  while (!e) {
    uint32_t t;
    const uint8_t *p;
    uint64_t n;
    e = ctl_xf_read_next(&x, &t, &p, &n);
    if (!e && t == CTL_XF_T_END) break;
  }
  snprintf(msg, cap, "%s", e ? x.msg : "ok");
  ctl_xf_close(&x);
  fclose(f);
  return e;
}

int main(int argc, char **argv) {
  if (argc != 2) { fprintf(stderr, "usage: %s CORPUS_DIR\n", argv[0]); return 2; }
  corpus_file c;
  if (corpus_open(&c, argv[1])) return 2;
  int files = 0, bad = 0;
  while (corpus_next(&c)) {
    LLVMFuzzerTestOneInput(c.buf, c.size);
    char msg[256];
    int e = read_verdict(c.path, msg, sizeof msg);
    int want_ok = strncmp(c.name, "valid", 5) == 0;
    if ((e == 0) != want_ok) {
      printf("FAIL %s: %s\n", c.name, msg);
      bad++;
    } else {
      printf("ok   %s: %s\n", c.name, msg);
    }
    files++;
  }
  printf("%d passed, %d failed\n", files - bad, bad);
  return bad || files == 0;
}
