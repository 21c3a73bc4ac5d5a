/*
 * ctl_exit.h: e8kvctl's exit codes, the one place they are defined, and the
 * mapping from libe8kv / store errors to them. The table in ctl_exit.c feeds
 * `e8kvctl --help` and the README section.
 */
#ifndef CTL_EXIT_H
#define CTL_EXIT_H

#include "clients/c/e8kv.h"

enum {
  CTL_EXIT_OK = 0,          /* the command did what was asked */
  CTL_EXIT_FAILURE = 1,     /* an unexpected error (a bug, out of memory) */
  CTL_EXIT_USAGE = 2,       /* bad command line */
  CTL_EXIT_UNREACHABLE = 3, /* no daemon at the address, deadline passed, data dir unusable */
  CTL_EXIT_AUTH = 4,        /* token missing, wrong, or not allowed for the namespace */
  CTL_EXIT_NOT_FOUND = 5,   /* unknown session (or other named object) */
  CTL_EXIT_CORRUPT = 6,     /* corrupted data found: bad CRC, quarantined records, bad export file */
  CTL_EXIT_REJECTED = 7,    /* the daemon or store refused the request (invalid, precondition, exists) */
  CTL_EXIT_NO_SPACE = 8,    /* capacity or a size limit reached (RESOURCE_EXHAUSTED, disk full) */
  CTL_EXIT_IO = 9,          /* a local file could not be read or written */
  CTL_EXIT_UNSUPPORTED = 10 /* not available in this mode or by this daemon (UNIMPLEMENTED) */
};

typedef struct ctl_exit_info {
  int code;
  const char *name;
  const char *meaning;
} ctl_exit_info;

/* The table of exit codes, ended by an entry with name NULL. */
extern const ctl_exit_info ctl_exit_table[];

/* Exit code for a libe8kv status. */
int ctl_exit_from_status(e8kv_status s);

#endif /* CTL_EXIT_H */
