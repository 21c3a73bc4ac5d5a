/*
 * e8kv_conn.c: opening and closing an e8kv_client: address check, channel
 * credentials (insecure or TLS from PEM files), channel arguments (message
 * size), and the bearer token kept as a ready metadata value.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <grpc/grpc_security.h>
#include <grpc/support/alloc.h>

#include "clients/c/e8kv_int.h"
#include "proto/e8kv_addr.h"

#define KVC_PEM_MAX (1u << 20) /* a PEM file larger than 1 MiB is refused */
#define KVC_RECONNECT_INITIAL_MS 100 /* first reconnect attempt after a lost connection */
#define KVC_RECONNECT_MAX_MS 1000    /* longest wait between attempts (gRPC: 120 s) */

void e8kv_options_init(e8kv_options *o) {
  memset(o, 0, sizeof *o);
  o->deadline_ms = 30000;
  o->stream_deadline_ms = 3600000;
  o->max_message_bytes = 64u << 20;
}

/* Reads a whole PEM file into a NUL-terminated malloc'd string. */
static e8kv_status kvc_read_pem(const char *path, char **out, e8kv_error *err) {
  FILE *f = fopen(path, "rb");
  if (!f) return kvc_fail(err, E8KV_E_IO, "cannot open %s: %s", path, strerror(errno));
  char *buf = malloc(KVC_PEM_MAX + 1);
  if (!buf) { fclose(f); return kvc_fail(err, E8KV_E_NOMEM, "out of memory reading %s", path); }
  size_t n = fread(buf, 1, KVC_PEM_MAX + 1, f);
  int bad = ferror(f);
  fclose(f);
  if (bad || n > KVC_PEM_MAX) {
    free(buf);
    return kvc_fail(err, E8KV_E_IO, "cannot read %s: %s", path,
                    bad ? "read error" : "larger than 1 MiB");
  }
  buf[n] = '\0';
  *out = buf;
  return E8KV_OK;
}

/* Checks the address form by the daemon's own rule (proto/e8kv_addr.h); gRPC resolves
 * names later. */
static e8kv_status kvc_check_address(const char *a, e8kv_error *err) {
  char why[256];
  if (!a) return kvc_fail(err, E8KV_E_USAGE, "no daemon address given: %s", E8KV_ADDR_FORMS);
  if (e8kv_addr_check(a, why, sizeof why) == 0) return E8KV_OK;
  return kvc_fail(err, E8KV_E_USAGE, "address \"%s\": %s", a, why);
}

static e8kv_status kvc_make_creds(const e8kv_options *o, grpc_channel_credentials **out,
                                  e8kv_error *err) {
  int tls = o->tls || o->tls_ca_file || o->tls_cert_file || o->tls_key_file;
  if (!tls) {
    *out = grpc_insecure_credentials_create();
    return E8KV_OK;
  }
  if (!o->tls_cert_file != !o->tls_key_file)
    return kvc_fail(err, E8KV_E_USAGE, "TLS client certificate and key must be given together");
  char *ca = NULL, *cert = NULL, *key = NULL;
  e8kv_status s = E8KV_OK;
  if (o->tls_ca_file) s = kvc_read_pem(o->tls_ca_file, &ca, err);
  if (!s && o->tls_cert_file) s = kvc_read_pem(o->tls_cert_file, &cert, err);
  if (!s && o->tls_key_file) s = kvc_read_pem(o->tls_key_file, &key, err);
  if (!s) {
    grpc_ssl_pem_key_cert_pair pair = {.private_key = key, .cert_chain = cert};
    *out = grpc_ssl_credentials_create(ca, cert ? &pair : NULL, NULL, NULL);
    if (!*out) s = kvc_fail(err, E8KV_E_USAGE, "gRPC refused the TLS certificates");
  }
  free(ca);
  free(cert);
  free(key);
  return s;
}

e8kv_status e8kv_client_open(const e8kv_options *o, e8kv_client **out, e8kv_error *err) {
  if (!o || !out) return kvc_fail(err, E8KV_E_USAGE, "e8kv_client_open: NULL argument");
  *out = NULL;
  e8kv_status s = kvc_check_address(o->address, err);
  if (s) return s;
  e8kv_client *c = calloc(1, sizeof *c);
  if (!c || !(c->address = strdup(o->address))) {
    free(c);
    return kvc_fail(err, E8KV_E_NOMEM, "out of memory");
  }
  grpc_init();
  grpc_channel_credentials *creds = NULL;
  s = kvc_make_creds(o, &creds, err);
  if (s) {
    free(c->address);
    free(c);
    grpc_shutdown();
    return s;
  }
  grpc_arg args[6];
  size_t nargs = 0;
  /* A connection attempt outlives a unary call (deadline_ms at open, plus 1 s; at least gRPC's
   * default 20 s): with gRPC's 20 s alone a call to a stopped or hung daemon failed before its
   * documented deadline (30 s by default) with "connection attempt timed out before receiving
   * SETTINGS frame"; now such a call ends at its deadline (DEADLINE_EXCEEDED, naming it). gRPC
   * takes this key as its minimum connect timeout. */
  uint64_t connect_ms = (uint64_t)(o->deadline_ms ? o->deadline_ms : 30000) + 1000;
  if (connect_ms < 20000) connect_ms = 20000;
  args[nargs].type = GRPC_ARG_INTEGER;
  args[nargs].key = GRPC_ARG_MIN_RECONNECT_BACKOFF_MS;
  args[nargs++].value.integer = connect_ms > INT32_MAX ? INT32_MAX : (int)connect_ms;
  /* Reconnect within KVC_RECONNECT_MAX_MS of a restarted daemon: gRPC's default backoff
   * grows to 120 s, so after an outage of a minute calls kept failing (UNAVAILABLE, no
   * connection attempt) for tens of seconds after e8kvd was back. */
  args[nargs].type = GRPC_ARG_INTEGER;
  args[nargs].key = GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS;
  args[nargs++].value.integer = KVC_RECONNECT_INITIAL_MS;
  args[nargs].type = GRPC_ARG_INTEGER;
  args[nargs].key = GRPC_ARG_MAX_RECONNECT_BACKOFF_MS;
  args[nargs++].value.integer = KVC_RECONNECT_MAX_MS;
  /* Each client its own connection: channels to one address would otherwise share a
   * subchannel (one TCP/unix connection), and parallel streams (e8kv_fetch_start over
   * several clients) would queue on it. */
  args[nargs].type = GRPC_ARG_INTEGER;
  args[nargs].key = GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL;
  args[nargs++].value.integer = 1;
  uint32_t maxmsg = o->max_message_bytes ? o->max_message_bytes : (64u << 20);
  if (maxmsg > INT32_MAX) maxmsg = INT32_MAX;
  args[nargs].type = GRPC_ARG_INTEGER;
  args[nargs].key = GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH;
  args[nargs++].value.integer = (int)maxmsg;
  if (o->tls_server_name) {
    args[nargs].type = GRPC_ARG_STRING;
    args[nargs].key = GRPC_SSL_TARGET_NAME_OVERRIDE_ARG;
    args[nargs++].value.string = (char *)o->tls_server_name;
  }
  grpc_channel_args cargs = {.num_args = nargs, .args = args};
  c->channel = grpc_channel_create(o->address, creds, &cargs);
  grpc_channel_credentials_release(creds);
  if (o->token && *o->token) {
    size_t n = strlen(o->token) + 8;
    char *v = malloc(n);
    if (!v) {
      e8kv_client_close(c);
      return kvc_fail(err, E8KV_E_NOMEM, "out of memory");
    }
    snprintf(v, n, "Bearer %s", o->token);
    c->auth_value = grpc_slice_from_copied_string(v);
    free(v);
    c->has_token = 1;
  }
  c->tls = o->tls || o->tls_ca_file || o->tls_cert_file || o->tls_key_file;
  atomic_store(&c->deadline_ms, o->deadline_ms ? o->deadline_ms : 30000);
  c->stream_deadline_ms = o->stream_deadline_ms;
  *out = c;
  return E8KV_OK;
}

void e8kv_client_close(e8kv_client *c) {
  if (!c) return;
  if (c->channel) grpc_channel_destroy(c->channel);
  if (c->has_token) grpc_slice_unref(c->auth_value);
  free(c->address);
  free(c);
  grpc_shutdown();
}

void e8kv_client_set_deadline_ms(e8kv_client *c, uint32_t ms) {
  if (c && ms) atomic_store(&c->deadline_ms, ms);
}

const char *e8kv_client_address(const e8kv_client *c) { return c ? c->address : NULL; }
