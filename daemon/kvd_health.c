/* kvd_health.c: grpc.health.v1 message helpers (see kvd_health.h). */
#include "daemon/kvd_health.h"

#include <stdlib.h>
#include <string.h>

#include "grpc/health/v1/health.pb-c.h"

int kvd_health_parse(const uint8_t *data, size_t len, char *service, size_t cap,
                     kvd_status *st) {
  Grpc__Health__V1__HealthCheckRequest *r =
      grpc__health__v1__health_check_request__unpack(NULL, len, data);
  if (!r) {
    kvd_fail(st, KVD_INVALID, "HealthCheckRequest: malformed protobuf (%zu bytes)", len);
    return -1;
  }
  size_t n = strlen(r->service);
  if (n >= cap) {
    grpc__health__v1__health_check_request__free_unpacked(r, NULL);
    kvd_fail(st, KVD_INVALID, "HealthCheckRequest.service longer than %zu bytes", cap - 1);
    return -1;
  }
  memcpy(service, r->service, n + 1);
  grpc__health__v1__health_check_request__free_unpacked(r, NULL);
  return 0;
}

int kvd_health_known(const char *service, const kvd_method *methods, size_t n) {
  if (!*service) return 1;
  size_t sl = strlen(service);
  for (size_t i = 0; i < n; i++) {
    const char *p = methods[i].path;
    if (p[0] == '/' && strncmp(p + 1, service, sl) == 0 && p[1 + sl] == '/') return 1;
  }
  return 0;
}

ProtobufCMessage *kvd_health_response(int status) {
  Grpc__Health__V1__HealthCheckResponse *m = malloc(sizeof *m);
  if (!m) abort();
  grpc__health__v1__health_check_response__init(m);
  m->status = (Grpc__Health__V1__HealthCheckResponse__ServingStatus)status;
  return &m->base;
}

void kvd_health_response_free(ProtobufCMessage *m) { free(m); }
