/*
 * ctl_out.h: e8kvctl output. Every command builds its result as a JSON value;
 * --json prints it as is, otherwise it is rendered for people: a table sized
 * to the terminal (shrinkable columns are cut in the middle with "~", then
 * droppable ones left out, when the terminal is too narrow; nothing is cut
 * when stdout is not a terminal) or a
 * list of "field: value" lines, with units (bytes as KiB/MiB/GiB, times in UTC).
 */
#ifndef CTL_OUT_H
#define CTL_OUT_H

#include <stddef.h>
#include <jansson.h>

#include "clients/cli/ctl_cmd.h"

typedef enum ctl_fmt {
  CTL_F_STR,    /* string as is */
  CTL_F_INT,    /* integer */
  CTL_F_BYTES,  /* integer bytes, shown as 1.5 MiB */
  CTL_F_LIMIT,  /* a byte budget: as CTL_F_BYTES, but 0 is shown as "unlimited" */
  CTL_F_FLOAT,  /* real, 3 significant decimals */
  CTL_F_PCT,    /* real fraction 0..1, shown as 12.5% */
  CTL_F_TIME,   /* integer milliseconds since the epoch, shown as UTC */
  CTL_F_BOOL    /* true/false shown as yes/no */
} ctl_fmt;

typedef struct ctl_col {
  const char *key;   /* JSON key; "a.b" looks inside nested objects */
  const char *title; /* column title or field label */
  ctl_fmt fmt;
  int shrink;        /* 1: may be cut to fit the terminal; 2: may be left out when
                        cutting the others is not enough (rightmost first); 0: never */
} ctl_col;

/* Width of the terminal on stdout; 0 when stdout is not a terminal (no limit). */
int ctl_term_width(void);
/* Display width of a UTF-8 string in terminal columns (wide characters such as CJK count 2,
 * combining marks 0; a byte that starts no valid sequence counts 1). */
size_t ctl_utf8_width(const char *s);
/* Copies UTF-8 text `in` into out (n bytes, always NUL-terminated, cut only between code
 * points) for a terminal: control characters (C0, DEL, C1) and invalid bytes become visible
 * escapes (\n, \t, \r, \x1b, \u009b, \xff), so text from the daemon or the store (a
 * model_id, metadata) can neither move the cursor nor fake output lines. Returns the length. */
size_t ctl_text_safe(const char *in, char *out, size_t n);
/* Formats v per f into buf (always NUL-terminated); missing/null values give "-". */
const char *ctl_fmt_value(const json_t *v, ctl_fmt f, char *buf, size_t n);
/* Looks up "a.b.c" in obj; NULL when absent. */
json_t *ctl_json_path(const json_t *obj, const char *path);

/* Prints rows (a JSON array of objects) as a table with a title line;
 * `cols` ends with key NULL. An empty array prints "(none)". */
void ctl_out_table(FILE *f, const ctl_col *cols, const json_t *rows, int width);
/* Prints one object as aligned "label: value" lines; `cols` ends with key NULL. */
void ctl_out_fields(FILE *f, const ctl_col *cols, const json_t *obj);
/* --json output: v printed indented, keys in insertion order, then a newline. */
int ctl_out_json(FILE *f, const json_t *v);

#endif /* CTL_OUT_H */
