/* kvd_health.h: grpc.health.v1 messages for kvd_grpc.c (Check and Watch).
 * The .proto is Debian grpc-proto's grpc/health/v1/health.proto, compiled by protoc-c into
 * $(BUILD)/gen at build time. */
#ifndef KVD_HEALTH_H
#define KVD_HEALTH_H

#include <stddef.h>
#include <stdint.h>

#include <protobuf-c/protobuf-c.h>

#include "daemon/kvd_grpc.h"

/* Decodes a HealthCheckRequest into service (NUL-terminated). -1 + INVALID status on bad bytes
 * or a name longer than cap - 1. */
int kvd_health_parse(const uint8_t *data, size_t len, char *service, size_t cap,
                     kvd_status *st);
/* 1 if `service` is "" or the service part of a method path in the table. */
int kvd_health_known(const char *service, const kvd_method *methods, size_t n);
/* A HealthCheckResponse with status (1 SERVING, 2 NOT_SERVING, 3 SERVICE_UNKNOWN); free it
 * with kvd_health_response_free. */
ProtobufCMessage *kvd_health_response(int status);
void kvd_health_response_free(ProtobufCMessage *m);

#endif
