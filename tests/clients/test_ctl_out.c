/*
 * test_ctl_out.c: e8kvctl's output module: tables fitted to a terminal width
 * (shrinkable columns cut, the rest intact), value formats, and the progress
 * bar's rendering.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "clients/cli/ctl_out.h"
#include "clients/cli/ctl_progress.h"

static char *render_table(const ctl_col *cols, json_t *rows, int width) {
  char *buf = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&buf, &len);
  ctl_out_table(f, cols, rows, width);
  fclose(f);
  return buf;
}

static size_t max_line(const char *s) {
  size_t best = 0, cur = 0;
  for (; *s; s++) {
    if (*s == '\n') { if (cur > best) best = cur; cur = 0; }
    else if (((unsigned char)*s & 0xC0) != 0x80) cur++;
  }
  return cur > best ? cur : best;
}

static const ctl_col cols[] = {{"name", "SESSION", CTL_F_STR, 1},
                               {"n", "TOKENS", CTL_F_INT, 0},
                               {"b", "STORED", CTL_F_BYTES, 0},
                               {NULL, NULL, CTL_F_STR, 0}};

static void test_table_fits_width(void **state) {
  (void)state;
  json_t *rows = json_pack("[{s:s,s:i,s:i},{s:s,s:i,s:i}]", "name",
                           "a-very-long-session-name-that-does-not-fit-in-forty-columns", "n", 123456,
                           "b", 1536, "name", "short", "n", 7, "b", 3 << 20);
  char *wide = render_table(cols, rows, 0);
  assert_non_null(strstr(wide, "a-very-long-session-name-that-does-not-fit-in-forty-columns"));
  assert_non_null(strstr(wide, "1.5 KiB"));
  assert_non_null(strstr(wide, "3.0 MiB"));
  char *narrow = render_table(cols, rows, 40);
  assert_true(max_line(narrow) <= 40);
  assert_non_null(strstr(narrow, "~"));        /* the long name was cut */
  assert_non_null(strstr(narrow, "123456"));   /* numbers never are */
  assert_non_null(strstr(narrow, "short"));
  free(wide);
  free(narrow);
  json_decref(rows);
  /* Middle cut keeps the end of names; a droppable column goes before numbers are lost. */
  static const ctl_col cols2[] = {{"name", "SESSION", CTL_F_STR, 1},
                                  {"n", "TOKENS", CTL_F_INT, 0},
                                  {"t", "UPDATED", CTL_F_TIME, 2},
                                  {NULL, NULL, CTL_F_STR, 0}};
  json_t *rows2 = json_pack("[{s:s,s:i,s:I}]", "name", "chat-session-number-0042", "n", 99, "t",
                            (json_int_t)1700000000000);
  char *t2 = render_table(cols2, rows2, 24);
  assert_true(max_line(t2) <= 24);
  assert_non_null(strstr(t2, "0042"));
  assert_non_null(strstr(t2, "chat"));
  assert_non_null(strstr(t2, "99"));
  assert_null(strstr(t2, "UPDATED"));
  free(t2);
  char *t3 = render_table(cols2, rows2, 0);
  assert_non_null(strstr(t3, "UPDATED"));
  assert_non_null(strstr(t3, "chat-session-number-0042"));
  free(t3);
  json_decref(rows2);
  json_t *none = json_array();
  char *empty = render_table(cols, none, 80);
  assert_string_equal(empty, "(none)\n");
  free(empty);
  json_decref(none);
}

static void test_formats(void **state) {
  (void)state;
  char buf[64];
  json_t *v = json_integer(1700000000000);
  assert_string_equal(ctl_fmt_value(v, CTL_F_TIME, buf, sizeof buf), "2023-11-14 22:13:20Z");
  json_decref(v);
  v = json_real(0.125);
  assert_string_equal(ctl_fmt_value(v, CTL_F_PCT, buf, sizeof buf), "12.5%");
  json_decref(v);
  assert_string_equal(ctl_fmt_value(NULL, CTL_F_INT, buf, sizeof buf), "-");
  v = json_integer(512);
  assert_string_equal(ctl_fmt_value(v, CTL_F_BYTES, buf, sizeof buf), "512 B");
  json_decref(v);
  json_t *o = json_pack("{s:{s:i}}", "a", "b", 5);
  assert_int_equal(json_integer_value(ctl_json_path(o, "a.b")), 5);
  assert_null(ctl_json_path(o, "a.c"));
  json_decref(o);
  assert_int_equal(ctl_utf8_width("h\xc3\xa9llo"), 5);
}

/* Display widths of each line (terminal columns) of a rendered table. */
static void line_widths(const char *s, size_t *w, int max, int *n) {
  *n = 0;
  char line[1024];
  while (*s && *n < max) {
    size_t len = strcspn(s, "\n");
    snprintf(line, sizeof line, "%.*s", (int)len, s);
    w[(*n)++] = ctl_utf8_width(line);
    s += len + (s[len] == '\n');
  }
}

/* Text from the daemon (a model_id, metadata) cannot move the cursor or fake lines, and
 * wide characters (CJK) count two columns, so tables stay aligned and within the width. */
static void test_unsafe_and_wide_text(void **state) {
  (void)state;
  char buf[64];
  ctl_text_safe("a\x1b[31mb\nc\td\re\x7f" "f\xc2\x9bg\xffh\xc3", buf, sizeof buf);
  assert_string_equal(buf, "a\\x1b[31mb\\nc\\td\\re\\x7ff\\u009bg\\xffh\\xc3");
  ctl_text_safe("\xe6\x97\xa5\xe6\x9c\xac", buf, 5); /* room for one 3-byte code point */
  assert_string_equal(buf, "\xe6\x97\xa5");
  ctl_text_safe("ab\x1b", buf, 5); /* an escape is never cut in half */
  assert_string_equal(buf, "ab");
  json_t *v = json_string("evil\x1b[2J\nfake");
  assert_string_equal(ctl_fmt_value(v, CTL_F_STR, buf, sizeof buf), "evil\\x1b[2J\\nfake");
  json_decref(v);
  assert_int_equal(ctl_utf8_width("\xe6\x97\xa5\xe6\x9c\xac"), 4); /* 日本 */
  assert_int_equal(ctl_utf8_width("e\xcc\x81"), 1);                 /* e + combining acute */
  assert_int_equal(ctl_utf8_width("a\xff"), 2);
  json_t *rows = json_pack("[{s:s,s:i,s:i},{s:s,s:i,s:i},{s:s,s:i,s:i}]",
                           "name", "\xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e\xe3\x83\xa2\xe3\x83\x87"
                                   "\xe3\x83\xab-model", "n", 1, "b", 1,
                           "name", "ascii-model-name", "n", 22, "b", 2,
                           "name", "two\nlines", "n", 333, "b", 3);
  size_t w[8];
  int n;
  char *wide = render_table(cols, rows, 0);
  line_widths(wide, w, 8, &n);
  assert_int_equal(n, 4); /* title + 3 rows: the newline in a name did not add one */
  for (int i = 1; i < n; i++) assert_int_equal(w[i], w[0]);
  char *narrow = render_table(cols, rows, 30);
  line_widths(narrow, w, 8, &n);
  assert_int_equal(n, 4);
  for (int i = 0; i < n; i++) assert_true(w[i] <= 30 && w[i] == w[0]);
  assert_non_null(strstr(narrow, "~"));
  free(wide);
  free(narrow);
  json_decref(rows);
}

static void test_progress_render(void **state) {
  (void)state;
  ctl_prog p;
  ctl_prog_begin(&p, 0, "export", 4u << 20, 1);
  p.done = 1u << 20;
  char line[256];
  ctl_prog_render(&p, p.t_start + 1.0, 80, line, sizeof line);
  assert_true(strlen(line) <= 80);
  assert_non_null(strstr(line, " 25%"));
  assert_non_null(strstr(line, "1.0/4.0 MiB"));
  assert_non_null(strstr(line, "ETA 3s"));
  assert_non_null(strstr(line, "[#"));
  ctl_prog_begin(&p, 0, "bench", 0, 0); /* unknown total: no bar */
  p.done = 10;
  ctl_prog_render(&p, p.t_start + 2.0, 80, line, sizeof line);
  assert_null(strstr(line, "["));
  assert_non_null(strstr(line, "5.0/s"));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_table_fits_width),
      cmocka_unit_test(test_formats),
      cmocka_unit_test(test_unsafe_and_wide_text),
      cmocka_unit_test(test_progress_render),
  };
  return cmocka_run_group_tests_name("ctl_out", tests, NULL, NULL);
}
