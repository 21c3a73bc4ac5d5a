/* addr_cases.h: reads tests/clients/addr_cases.txt (the address rule as a table, see the file)
 * for the C tests of e8kvd --listen (tests/daemon/test_kvd_units.c) and libe8kv
 * (tests/clients/test_libe8kv.c). Tests run from the repository root; $E8KV_ADDR_CASES names
 * another copy. Header-only so both test programs take it without a shared object. */
#ifndef ADDR_CASES_H
#define ADDR_CASES_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct addr_case {
  int ok;          /* 1: the address is taken; 0: refused */
  char addr[256];  /* the address */
  char want[128];  /* for a refusal: a fragment its message must contain */
} addr_case;

/* Fills cases[0..cap) and returns how many, or -1 when the file cannot be read or a line is
 * malformed (with the reason on stderr). */
static inline int addr_cases_load(addr_case *cases, int cap) {
  const char *path = getenv("E8KV_ADDR_CASES") ? getenv("E8KV_ADDR_CASES")
                                               : "tests/clients/addr_cases.txt";
  FILE *f = fopen(path, "r");
  if (!f) { perror(path); return -1; }
  char line[512];
  int n = 0;
  while (fgets(line, sizeof line, f)) {
    line[strcspn(line, "\n")] = '\0';
    if (!line[0] || line[0] == '#') continue;
    char *a = strchr(line, '|'), *w = a ? strchr(a + 1, '|') : NULL;
    int ok = a && a - line == 2 && strncmp(line, "ok", 2) == 0 && !w;
    int bad = a && a - line == 3 && strncmp(line, "bad", 3) == 0 && w && w[1];
    if (bad) *w = '\0';
    if (n == cap || !(ok || bad) || strlen(a + 1) >= sizeof cases[n].addr) {
      fprintf(stderr, "%s: bad line or too many cases: %s\n", path, line);
      fclose(f);
      return -1;
    }
    cases[n].ok = ok;
    snprintf(cases[n].addr, sizeof cases[n].addr, "%s", a + 1);
    snprintf(cases[n].want, sizeof cases[n].want, "%s", bad ? w + 1 : "");
    n++;
  }
  fclose(f);
  return n;
}

#endif
