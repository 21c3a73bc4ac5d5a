# proto/proto.mk: the ONE rule set for the C code of the API, used by the daemon
# (daemon/daemon.mk) and the clients (clients/c/client.mk), which both include
# this file (the top Makefile reads only the part fragments; the guard makes the
# second include a no-op, whichever part comes first).
#
# protoc-c generates proto/e8kv/v1/kvstore.proto and Debian grpc-proto's
# grpc/health/v1/health.proto into $(PROTO_GEN) at build time (never committed).
# libe8kvpb.a = the generated message code + proto/e8kv_fp.c (the one wire <->
# codec fingerprint conversion, see proto/e8kv_fp.h) + proto/e8kv_addr.c (the one
# address rule of e8kvd --listen and the clients). It needs libprotobuf-c and
# libe8codec; it knows nothing of gRPC, the store or the daemon.
ifndef PROTO_MK_INCLUDED
PROTO_MK_INCLUDED := 1

PROTO_GEN     := $(BUILD)/gen/proto
PROTO_KVSTORE := proto/e8kv/v1/kvstore.proto
PROTO_HEALTH  := $(firstword $(wildcard /usr/share/grpc-proto/grpc/health/v1/health.proto) \
                   /usr/share/grpc-proto/grpc/health/v1/health.proto)
PROTO_GEN_C   := $(PROTO_GEN)/e8kv/v1/kvstore.pb-c.c $(PROTO_GEN)/grpc/health/v1/health.pb-c.c
PROTO_GEN_H   := $(PROTO_GEN_C:.c=.h)
PROTO_GEN_O   := $(PROTO_GEN_C:.c=.o)
PROTO_OBJS    := $(PROTO_GEN_O) $(BUILD)/obj/proto/e8kv_fp.o $(BUILD)/obj/proto/e8kv_addr.o
PROTO_LIB     := $(BUILD)/lib/libe8kvpb.a

CFLAGS_proto += $(call pc_cflags,libprotobuf-c) -I$(PROTO_GEN)

LIBS += $(PROTO_LIB)

$(PROTO_GEN)/e8kv/v1/kvstore.pb-c.c $(PROTO_GEN)/e8kv/v1/kvstore.pb-c.h &: $(PROTO_KVSTORE)
	@mkdir -p $(PROTO_GEN)
	protoc-c --c_out=$(PROTO_GEN) -Iproto $<

$(PROTO_GEN)/grpc/health/v1/health.pb-c.c $(PROTO_GEN)/grpc/health/v1/health.pb-c.h &: $(PROTO_HEALTH)
	@mkdir -p $(PROTO_GEN)
	protoc-c --c_out=$(PROTO_GEN) -I$(patsubst %/grpc/health/v1/health.proto,%,$<) $<

$(PROTO_GEN)/%.pb-c.o: $(PROTO_GEN)/%.pb-c.c
	$(CC) $(CFLAGS_BASE) $(call pc_cflags,libprotobuf-c) -I$(PROTO_GEN) -c $< -o $@

$(BUILD)/obj/proto/e8kv_fp.o: | $(PROTO_GEN_H)

$(PROTO_LIB): $(PROTO_OBJS)
	@mkdir -p $(dir $@)
	rm -f $@ && ar rcs $@ $^

endif
