/* kvd_listen.h: what e8kvd checks of a listen address before gRPC binds it, and gRPC's own log
 * lines routed into e8kvd's log (daemon/kvd_log.h), so that a failed bind is reported as one
 * clear line of ours instead of gRPC's multi-line error dump.
 *
 * Used by kvd_grpc.c at start, on the main thread.
 */
#ifndef KVD_LISTEN_H
#define KVD_LISTEN_H

#include <stddef.h>

/* Checks what gRPC needs to bind a unix socket at path (the address without "unix:" /
 * "unix://"): its directory exists, is a directory and is writable and searchable by this
 * process, the path fits a unix socket address, and the path is either absent or a socket (a
 * stale socket file of a killed daemon is replaced by gRPC; any other file is not). e8kvd never
 * creates the directory. Returns 0 when all holds, else -1 with the reason, naming the
 * directory or file and what to do, in why (cap bytes). */
int kvd_listen_unix_check(const char *path, char *why, size_t cap);

/* Routes gRPC's log (gpr_log) into e8kvd's: gRPC errors become level=warn event=grpc lines
 * (one line each, quoted), anything gRPC logs below error level=debug lines. Not done when the
 * environment sets GRPC_VERBOSITY or GRPC_TRACE (whoever sets them wants gRPC's own lines).
 * Call before grpc_init; idempotent. */
void kvd_listen_grpc_log_init(void);

/* Between capture_begin and capture_end (around one bind, main thread), gRPC error lines are
 * kept instead of logged at warn (they are logged at debug): the caller reports the cause in its
 * own error. capture_end copies the cause of the last one into out (cap bytes) as
 * "<syscall>: <os error>" (e.g. "bind: Address already in use") when the line names them, else
 * as its first 200 bytes, and returns 0; it returns -1 (out "") when gRPC logged no error. */
void kvd_listen_grpc_capture_begin(void);
int kvd_listen_grpc_capture_end(char *out, size_t cap);

#endif
