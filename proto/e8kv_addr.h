/* e8kv_addr.h: the one rule for e8kvd addresses, shared by e8kvd (--listen), libe8kv
 * (e8kv_client_open) and so e8kvctl (--addr). The Python client (e8kv/client.py,
 * check_address) applies the same rule with the same messages; tests/clients/addr_cases.txt
 * is the table all four are tested on (test_kvd_units, test_libe8kv, test_ctl_e2e.py,
 * tests/python/test_client.py), so a form one of them takes, all take.
 *
 * Taken (checked here before gRPC sees the string, so a typo gets a clear message at once
 * instead of an obscure gRPC error, or a hang, later):
 *   host:port          TCP; host is a name or IPv4 literal of [A-Za-z0-9._-], port 0..65535
 *   [v6]:port          TCP over an IPv6 literal, e.g. [::1]:50051
 *   unix:PATH          a unix-domain socket, PATH absolute or relative
 *   unix:///abs/path   the same in URI form (three slashes: an absolute path)
 * Refused, each with its own reason: an empty address; spaces or control characters; URL
 * schemes (tcp://, http://, dns:///; gRPC names schemes the daemon cannot listen on); a bare
 * socket path (written unix:PATH); no port, a port that is not a number in 0..65535; no
 * host; an IPv6 literal without brackets, or with a byte no IPv6 literal has (hex digits,
 * ':', '.', then an optional %zone); unix: without a path, unix://NAME (two slashes: a
 * host, not a path); a socket path longer than a unix socket holds (107 bytes); a socket
 * path with '%' or ',' (gRPC decodes %XX in it, so unix:/run/a%41.sock would bind
 * /run/aA.sock, and reads a comma as a list of sockets; e8kvd --listen splits on commas).
 *
 * Thread safety: pure function (no global state).
 */
#ifndef E8KV_ADDR_H
#define E8KV_ADDR_H

#include <stddef.h>

/* The forms, as every refusal ends. */
#define E8KV_ADDR_FORMS "use host:port (TCP, IPv6 as [::1]:port) or unix:/path/to.sock"

/* The longest socket path a unix address may name, in bytes (sun_path less its NUL). */
#define E8KV_ADDR_UNIX_PATH_MAX 107

/* 0 when `a` is one of the forms above. Otherwise -1, and `why` (when not NULL, `cap` bytes,
 * always NUL-terminated) gets the reason followed by E8KV_ADDR_FORMS, without the address
 * itself, e.g. "URL schemes are not taken: use host:port (...)"; callers print
 * `<what> "<address>": <why>`. */
int e8kv_addr_check(const char *a, char *why, size_t cap);

#endif
