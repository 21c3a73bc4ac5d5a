/*
 * ctl_exit.c: the exit-code table of e8kvctl and the mapping of libe8kv
 * statuses (gRPC codes and client-side codes) onto it.
 */
#include "clients/cli/ctl_exit.h"

const ctl_exit_info ctl_exit_table[] = {
    {CTL_EXIT_OK, "ok", "the command did what was asked"},
    {CTL_EXIT_FAILURE, "failure", "unexpected error (internal, out of memory, protocol)"},
    {CTL_EXIT_USAGE, "usage", "bad command line (unknown command or option, missing argument)"},
    {CTL_EXIT_UNREACHABLE, "unreachable",
     "no daemon answers at the address, the deadline passed, or the data dir cannot be opened"},
    {CTL_EXIT_AUTH, "auth", "token missing or wrong, or not allowed for the namespace"},
    {CTL_EXIT_NOT_FOUND, "not-found", "unknown session"},
    {CTL_EXIT_CORRUPT, "corrupt",
     "corrupted data: verify found bad records, or an export file is damaged"},
    {CTL_EXIT_REJECTED, "rejected",
     "the daemon or store refused the request (invalid argument, precondition, already exists)"},
    {CTL_EXIT_NO_SPACE, "no-space", "capacity or a size limit reached, or disk full"},
    {CTL_EXIT_IO, "io", "a local file could not be read or written"},
    {CTL_EXIT_UNSUPPORTED, "unsupported",
     "not available in this mode (online/offline) or not implemented by the daemon"},
    {0, NULL, NULL}};

int ctl_exit_from_status(e8kv_status s) {
  switch (s) {
    case E8KV_OK: return CTL_EXIT_OK;
    case E8KV_UNAVAILABLE:
    case E8KV_DEADLINE_EXCEEDED:
    case E8KV_CANCELLED: return CTL_EXIT_UNREACHABLE;
    case E8KV_UNAUTHENTICATED:
    case E8KV_PERMISSION_DENIED: return CTL_EXIT_AUTH;
    case E8KV_NOT_FOUND: return CTL_EXIT_NOT_FOUND;
    case E8KV_DATA_LOSS: return CTL_EXIT_CORRUPT;
    case E8KV_INVALID_ARGUMENT:
    case E8KV_FAILED_PRECONDITION:
    case E8KV_ALREADY_EXISTS:
    case E8KV_OUT_OF_RANGE:
    case E8KV_ABORTED: return CTL_EXIT_REJECTED;
    case E8KV_RESOURCE_EXHAUSTED: return CTL_EXIT_NO_SPACE;
    case E8KV_UNIMPLEMENTED: return CTL_EXIT_UNSUPPORTED;
    case E8KV_E_USAGE: return CTL_EXIT_USAGE;
    case E8KV_E_IO: return CTL_EXIT_IO;
    default: return CTL_EXIT_FAILURE;
  }
}
