/*
 * replay_kvc_piece.c: runs the corpus of fuzz_kvc_piece (kvc_piece_parse against protobuf-c)
 * as a regression test without libFuzzer: every file goes through the target (which aborts on
 * any disagreement), and the seeds' verdicts are checked: files named valid-* must parse
 * (as one segment and cut in 1..7-byte segments), bad-* must be refused. Usage: replay DIR.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clients/c/e8kv_int.h"
#include "tests/clients/corpus_files.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int main(int argc, char **argv) {
  if (argc != 2) { fprintf(stderr, "usage: %s CORPUS_DIR\n", argv[0]); return 2; }
  corpus_file c;
  if (corpus_open(&c, argv[1])) return 2;
  int files = 0, bad = 0;
  while (corpus_next(&c)) {
    uint8_t *buf = c.buf;
    size_t got = c.size;
    files++;
    LLVMFuzzerTestOneInput(buf, got);                 /* the differential check */
    int valid = strncmp(c.name, "valid", 5) == 0;
    if (valid || strncmp(c.name, "bad", 3) == 0) { /* seeds: the message from byte 1 on */
      kvc_seg one = {buf + 1, got ? got - 1 : 0};
      kvc_piece pc;
      int ok = kvc_piece_parse(&one, 1, &pc) == 0;
      for (uint8_t cut = 1; cut <= 7 && ok; cut++) {
        buf[0] = cut;
        LLVMFuzzerTestOneInput(buf, got);
      }
      if (ok != valid) {
        printf("FAIL %s: %s\n", c.name, ok ? "parsed" : "refused");
        bad++;
      }
    }
  }
  printf("replay_kvc_piece: %d files, %d failed\n", files, bad);
  return bad ? 1 : 0;
}
