# daemon/daemon.mk: e8kvd, the gRPC service (see daemon/kvd_grpc.h for how it is built).
#
# The C code of the .proto files and the wire <-> codec fingerprint conversion come from
# proto/proto.mk (one rule set, shared with libe8kv): libe8kvpb.a, headers in $(PROTO_GEN).
# Everything of the daemon except main() goes into libkvd.a, which the tests and the fuzz
# target link too.
#
#   $(BUILD)/bin/e8kvd            the daemon
#   make bench-daemon [QUICK=1]   -> build/bench/daemon.json (see tests/daemon/kvd_bench.c)
#   make readme-daemon            prints the README "e8kvd configuration" table

include proto/proto.mk

KVD_SRCS     := $(filter-out daemon/kvd_main.c,$(sort $(wildcard daemon/*.c)))
KVD_OBJS     := $(KVD_SRCS:%.c=$(BUILD)/obj/%.o)
KVD_LIB      := $(BUILD)/lib/libkvd.a
KVD_BIN      := $(BUILD)/bin/e8kvd
KVD_PKGS     := grpc libprotobuf-c libmicrohttpd openssl
# libe8store and libe8codec with the packages they need (their fragments define the rules).
KVD_DEP_LIBS := $(BUILD)/lib/libe8store.a $(BUILD)/lib/libe8codec.a
KVD_DEP_PKGS := lmdb liburing libzstd libisal libcrypto
KVD_LDLIBS    = $(KVD_LIB) $(PROTO_LIB) $(KVD_DEP_LIBS) \
                $(call pc_libs,$(KVD_PKGS) $(KVD_DEP_PKGS)) -lm

CFLAGS_daemon += $(call pc_cflags,$(KVD_PKGS)) -I$(PROTO_GEN)

BINS += $(KVD_BIN)
LIBS += $(KVD_LIB)

# Daemon and daemon-test objects include the generated headers.
$(KVD_OBJS) $(BUILD)/obj/daemon/kvd_main.o: | $(PROTO_GEN_H)

$(KVD_LIB): $(KVD_OBJS)
	@mkdir -p $(dir $@)
	rm -f $@ && ar rcs $@ $^

$(KVD_BIN): $(BUILD)/obj/daemon/kvd_main.o $(KVD_LIB) $(PROTO_LIB) $(KVD_DEP_LIBS)
	@mkdir -p $(dir $@)
	$(CC) -o $@ $< $(KVD_LDLIBS) $(LDFLAGS_BASE)

.PHONY: readme-daemon
readme-daemon: $(KVD_BIN)
	$(KVD_BIN) --help-markdown

# ---------------------------------------------------------------- tests (tests/daemon/)
# End-to-end tests start a real e8kvd ($(KVD_BIN)) on a temp dir with a unix socket there.
KVD_TDIR       := $(BUILD)/tests/daemon
KVD_TEST_HELP  := $(BUILD)/obj/tests/daemon/kvt_client.o $(BUILD)/obj/tests/daemon/kvt_util.o
KVD_TEST_NAMES := test_kvd_e2e test_kvd_bad test_kvd_lease
KVD_TESTS      := $(addprefix $(KVD_TDIR)/,$(KVD_TEST_NAMES))
KVD_TEST_OBJS  := $(KVD_TEST_HELP) $(patsubst %,$(BUILD)/obj/tests/daemon/%.o,$(KVD_TEST_NAMES))
KVD_TEST_LIBS   = $(PROTO_LIB) $(BUILD)/lib/libe8codec.a \
                  $(call pc_libs,grpc libprotobuf-c cmocka libzstd libisal libcrypto) -lm

$(KVD_TEST_OBJS): CFLAGS_tests += -I$(PROTO_GEN) $(call pc_cflags,$(KVD_PKGS) cmocka)
$(KVD_TEST_OBJS): | $(PROTO_GEN_H)

$(KVD_TDIR)/%: $(BUILD)/obj/tests/daemon/%.o $(KVD_TEST_HELP) $(PROTO_LIB) \
               $(BUILD)/lib/libe8codec.a | $(KVD_BIN)
	@mkdir -p $(dir $@)
	$(CC) -o $@ $< $(KVD_TEST_HELP) $(KVD_TEST_LIBS) $(LDFLAGS_BASE)

TEST_BINS += $(KVD_TESTS)
TEST_CMDS += "tests/daemon/check_readme.sh $(KVD_BIN)"

# ---------------------------------------------------------------- fuzzing
# libFuzzer target on request decoding (make fuzz); its corpus is replayed by `make test`.
KVD_FUZZ_SRCS := tests/daemon/fuzz_kvd_request.c proto/e8kv_fp.c proto/e8kv_addr.c daemon/kvd_fp.c daemon/kvd_session.c \
                 daemon/kvd_status.c daemon/kvd_health.c daemon/kvd_payload.c \
                 daemon/kvd_config.c daemon/kvd_auth.c daemon/kvd_log.c
KVD_FUZZ_LIBS  = $(BUILD)/lib/libe8store.a $(BUILD)/lib/libe8codec.a \
                 $(call pc_libs,libprotobuf-c lmdb liburing libzstd libisal openssl) -lm
KVD_REPLAY    := $(KVD_TDIR)/kvd_fuzz_replay

$(BUILD)/obj/tests/daemon/kvd_fuzz_replay.o: tests/daemon/fuzz_kvd_request.c | $(PROTO_GEN_H)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_BASE) -I$(PROTO_GEN) $(call pc_cflags,libprotobuf-c) -DKVD_FUZZ_REPLAY -c $< -o $@

$(KVD_REPLAY): $(BUILD)/obj/tests/daemon/kvd_fuzz_replay.o $(KVD_LIB) $(PROTO_LIB) \
               $(BUILD)/lib/libe8store.a $(BUILD)/lib/libe8codec.a
	@mkdir -p $(dir $@)
	$(CC) -o $@ $< $(KVD_LIB) $(PROTO_LIB) $(KVD_FUZZ_LIBS) $(LDFLAGS_BASE)

$(BUILD)/fuzz/kvd_fuzz_request: $(KVD_FUZZ_SRCS) $(PROTO_GEN_C) $(BUILD)/lib/libe8store.a \
                                $(BUILD)/lib/libe8codec.a | $(PROTO_GEN_H)
	@mkdir -p $(dir $@)
	clang -std=c11 -g -O1 -D_GNU_SOURCE -I. -I$(PROTO_GEN) $(call pc_cflags,libprotobuf-c) \
	  -fsanitize=fuzzer,address,undefined -o $@ $(KVD_FUZZ_SRCS) $(PROTO_GEN_C) $(KVD_FUZZ_LIBS) \
	  -pthread


BINS      += $(KVD_REPLAY)
TEST_CMDS += "$(KVD_REPLAY) tests/daemon/corpus"
FUZZ_BINS += $(BUILD)/fuzz/kvd_fuzz_request

# The independent Python client (grpcio, stubs generated at test time).
TEST_CMDS += "E8KVD=$(KVD_BIN) $(PYTHON) -m pytest -q -p no:cacheprovider tests/daemon/test_kvd_grpcio.py"
# Hostile and careless clients (tests/daemon/test_adversarial.py; the full-disk cases mount a
# 4 MiB tmpfs in a private mount namespace: unshare -m as root, unshare -r -m otherwise).
TEST_CMDS += "E8KVD=$(KVD_BIN) $(PYTHON) -m pytest -q -rs -p no:cacheprovider tests/daemon/test_adversarial.py tests/daemon/test_listen_conflicts.py tests/daemon/test_session_purge.py"

# ---------------------------------------------------------------- benchmark
# make bench-daemon [QUICK=1] -> build/bench/daemon.json (e8kvd vs redis-server, same run).
KVD_BENCH := $(KVD_TDIR)/kvd_bench
$(BUILD)/obj/tests/daemon/kvd_bench.o: CFLAGS_tests += -I$(PROTO_GEN) \
    $(call pc_cflags,$(KVD_PKGS) hiredis jansson)
$(BUILD)/obj/tests/daemon/kvd_bench.o: | $(PROTO_GEN_H)
$(KVD_BENCH): $(BUILD)/obj/tests/daemon/kvd_bench.o $(KVD_TEST_HELP) $(PROTO_LIB) \
              $(BUILD)/lib/libe8codec.a | $(KVD_BIN)
	@mkdir -p $(dir $@)
	$(CC) -o $@ $< $(KVD_TEST_HELP) $(KVD_TEST_LIBS) $(call pc_libs,hiredis jansson) \
	  $(LDFLAGS_BASE)

# (built by bench-daemon only, so `make test` never needs hiredis)

bench-daemon: $(KVD_BENCH) $(KVD_BIN)
	@mkdir -p build/bench
	$(KVD_BENCH) --e8kvd $(KVD_BIN) --out build/bench/daemon.json $(if $(QUICK),--quick)
	@cat build/bench/daemon.json

# make bench-daemon-get -> build/bench/daemon_get.json: GetChunks of ~660 MB (a 32K-token
# prefix of an 8B-class model) through libe8kv, 1 and N parallel calls, unix and TCP.
KVD_GETBENCH := $(KVD_TDIR)/kvd_getbench
$(BUILD)/obj/tests/daemon/kvd_getbench.o: CFLAGS_tests += -I$(PROTO_GEN) \
    $(call pc_cflags,$(KVD_PKGS) jansson)
$(BUILD)/obj/tests/daemon/kvd_getbench.o: | $(PROTO_GEN_H)
$(KVD_GETBENCH): $(BUILD)/obj/tests/daemon/kvd_getbench.o $(KVD_TEST_HELP) $(KVC_LIB) \
                 $(BUILD)/lib/libe8codec.a | $(KVD_BIN)
	@mkdir -p $(dir $@)
	$(CC) -o $@ $< $(KVD_TEST_HELP) $(KVC_LIB) $(KVD_TEST_LIBS) $(KVC_LDLIBS) \
	  $(call pc_libs,jansson) $(LDFLAGS_BASE)

.PHONY: bench-daemon-get
bench-daemon-get: $(KVD_GETBENCH) $(KVD_BIN)
	@mkdir -p build/bench
	$(KVD_GETBENCH) --e8kvd $(KVD_BIN) --out build/bench/daemon_get.json \
	  $(if $(QUICK),--chunks 16 --reps 1)
	@cat build/bench/daemon_get.json

# Unit tests of parsers and validators (no server): links the daemon library itself.
KVD_UNITS := $(KVD_TDIR)/test_kvd_units
$(BUILD)/obj/tests/daemon/test_kvd_units.o: CFLAGS_tests += -I$(PROTO_GEN) \
    $(call pc_cflags,$(KVD_PKGS) cmocka)
$(BUILD)/obj/tests/daemon/test_kvd_units.o: | $(PROTO_GEN_H)
$(KVD_UNITS): $(BUILD)/obj/tests/daemon/test_kvd_units.o $(KVD_LIB) $(PROTO_LIB) \
              $(BUILD)/lib/libe8store.a $(BUILD)/lib/libe8codec.a
	@mkdir -p $(dir $@)
	$(CC) -o $@ $< $(KVD_LIB) $(PROTO_LIB) $(KVD_FUZZ_LIBS) $(call pc_libs,cmocka) \
	  $(LDFLAGS_BASE)
TEST_BINS += $(KVD_UNITS)

# The all-or-nothing session change, with store steps failed on purpose (real store, no server).
KVD_SWRITE_T := $(KVD_TDIR)/test_kvd_swrite
$(BUILD)/obj/tests/daemon/test_kvd_swrite.o: CFLAGS_tests += -I$(PROTO_GEN) \
    $(call pc_cflags,$(KVD_PKGS) cmocka)
$(BUILD)/obj/tests/daemon/test_kvd_swrite.o: | $(PROTO_GEN_H)
$(KVD_SWRITE_T): $(BUILD)/obj/tests/daemon/test_kvd_swrite.o $(KVD_LIB) $(PROTO_LIB) \
                 $(BUILD)/lib/libe8store.a $(BUILD)/lib/libe8codec.a
	@mkdir -p $(dir $@)
	$(CC) -o $@ $< $(KVD_LIB) $(PROTO_LIB) $(KVD_FUZZ_LIBS) $(call pc_libs,cmocka) \
	  $(LDFLAGS_BASE)
TEST_BINS += $(KVD_SWRITE_T)
