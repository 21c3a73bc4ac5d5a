/* e8kv_addr.c: the one address rule of e8kvd and its clients (see e8kv_addr.h). Checks the
 * form only; names are resolved, and sockets found, by gRPC later. */
#include "proto/e8kv_addr.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The bytes of a host name (and of an IPv6 zone) */
#define ADDR_NAME_CHARS "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-"

/* Writes "<reason>: <forms>" into why; always returns -1. */
static int addr_refuse(char *why, size_t cap, const char *fmt, ...) {
  if (!why || !cap) return -1;
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(why, cap, fmt, ap);
  va_end(ap);
  if (n >= 0 && (size_t)n < cap) snprintf(why + n, cap - (size_t)n, ": %s", E8KV_ADDR_FORMS);
  return -1;
}

static int addr_check_unix(const char *a, char *why, size_t cap) {
  const char *path = a + 5;
  if (strncmp(path, "//", 2) == 0) {
    if (path[2] != '/')
      return addr_refuse(why, cap, "unix://NAME names a host, not a socket path (an absolute "
                         "path in URI form takes three slashes, unix:///path)");
    path += 2;
  }
  if (!*path) return addr_refuse(why, cap, "no socket path after unix:");
  /* gRPC reads a unix: path as a URI path: %XX is decoded (unix:/run/a%41.sock binds
   * /run/aA.sock, past e8kvd's check for a live daemon there) and a comma separates
   * several sockets (e8kvd --listen splits on it too), so neither names one path. */
  const char *odd = strpbrk(path, "%,");
  if (odd)
    return addr_refuse(why, cap, "the socket path has '%c', which gRPC reads as %s", *odd,
                       *odd == '%' ? "a %XX escape" : "a list of sockets");
  size_t n = strlen(path);
  if (n > E8KV_ADDR_UNIX_PATH_MAX)
    return addr_refuse(why, cap, "the socket path is %zu bytes; a unix socket takes at most %d",
                       n, E8KV_ADDR_UNIX_PATH_MAX);
  return 0;
}

/* The port: decimal digits, 0..65535. */
static int addr_check_port(const char *p, char *why, size_t cap) {
  if (!*p) return addr_refuse(why, cap, "has no port");
  if (strspn(p, "0123456789") != strlen(p))
    return addr_refuse(why, cap, "the port \"%s\" is not a number", p);
  if (strlen(p) > 5 || atol(p) > 65535)
    return addr_refuse(why, cap, "the port %s is out of range (0..65535)", p);
  return 0;
}

int e8kv_addr_check(const char *a, char *why, size_t cap) {
  if (why && cap) why[0] = '\0';
  if (!a || !*a) return addr_refuse(why, cap, "empty address");
  for (const char *p = a; *p; p++)
    if ((unsigned char)*p < 0x20 || *p == 0x7f)
      return addr_refuse(why, cap, "has a control character at byte %d", (int)(p - a));
  if (strncmp(a, "unix:", 5) == 0) return addr_check_unix(a, why, cap);
  if (strstr(a, "://")) return addr_refuse(why, cap, "URL schemes are not taken");
  if (*a == '/' || *a == '.' || *a == '~')
    return addr_refuse(why, cap, "has no port (a socket path is written unix:PATH)");
  if (strchr(a, ' ')) return addr_refuse(why, cap, "has a space");
  const char *port;
  if (*a == '[') {
    const char *close = strchr(a, ']');
    if (!close) return addr_refuse(why, cap, "has '[' but no ']'");
    if (close == a + 1) return addr_refuse(why, cap, "has no host between [ and ]");
    if (close[1] != ':') return addr_refuse(why, cap, "has no port after ]");
    /* hex digits, ':' and '.' (an IPv4 tail), then maybe a %zone (fe80::1%eth0) */
    const char *e = a + 1 + strspn(a + 1, "0123456789ABCDEFabcdef:.");
    if (*e == '%' && e + 1 < close) e += 1 + strspn(e + 1, ADDR_NAME_CHARS);
    if (e != close) {
      unsigned char b = (unsigned char)*e;
      return b > 0x20 && b < 0x7f
                 ? addr_refuse(why, cap, "the IPv6 address has '%c', which no IPv6 address has", b)
                 : addr_refuse(why, cap, "the IPv6 address has byte 0x%02x, which no IPv6 "
                               "address has", b);
    }
    port = close + 2;
  } else {
    const char *colon = strrchr(a, ':');
    if (!colon) return addr_refuse(why, cap, "has no port");
    if (colon == a) return addr_refuse(why, cap, "has no host");
    if (memchr(a, ':', (size_t)(colon - a)))
      return addr_refuse(why, cap, "an IPv6 address is written in brackets, [v6]:port");
    size_t ok = strspn(a, ADDR_NAME_CHARS);
    if (a + ok != colon) {
      unsigned char b = (unsigned char)a[ok];
      return b > 0x20 && b < 0x7f
                 ? addr_refuse(why, cap, "the host has '%c', which no host name has", b)
                 : addr_refuse(why, cap, "the host has byte 0x%02x, which no host name has", b);
    }
    port = colon + 1;
  }
  return addr_check_port(port, why, cap);
}
