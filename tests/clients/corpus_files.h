/* corpus_files.h: the directory walk shared by the corpus replays of tests/clients (a fuzz
 * target's corpus run as a regression test without libFuzzer). Header-only, as addr_cases.h,
 * so each replay program takes it without a shared object. */
#ifndef CORPUS_FILES_H
#define CORPUS_FILES_H

#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

typedef struct corpus_file {
  DIR *dir;
  const char *dirname;
  const char *name;    /* the current file's name (valid until the next corpus_next) */
  char path[4096];     /* dirname/name */
  uint8_t *buf;        /* its bytes, plus one spare byte; owned, freed by corpus_next */
  size_t size;         /* bytes read */
} corpus_file;

/* Opens DIR for corpus_next; 0, or -1 with the reason on stderr. */
static inline int corpus_open(corpus_file *c, const char *dirname) {
  *c = (corpus_file){.dirname = dirname};
  c->dir = opendir(dirname);
  if (!c->dir) { perror(dirname); return -1; }
  return 0;
}

/* Reads the next file (hidden names and files that cannot be opened are passed over); 1 when
 * c->name/path/buf/size hold it, 0 at the end (the directory is then closed). */
static inline int corpus_next(corpus_file *c) {
  free(c->buf);
  c->buf = NULL;
  struct dirent *de;
  while ((de = readdir(c->dir))) {
    if (de->d_name[0] == '.') continue;
    snprintf(c->path, sizeof c->path, "%s/%s", c->dirname, de->d_name);
    FILE *f = fopen(c->path, "rb");
    if (!f) continue;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    rewind(f);
    c->buf = malloc(n > 0 ? (size_t)n + 1 : 1);
    c->size = c->buf ? fread(c->buf, 1, n > 0 ? (size_t)n : 0, f) : 0;
    fclose(f);
    if (!c->buf) break;
    c->name = de->d_name;
    return 1;
  }
  closedir(c->dir);
  c->dir = NULL;
  return 0;
}

#endif
