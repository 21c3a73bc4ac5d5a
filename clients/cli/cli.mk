# clients/cli/cli.mk: e8kvctl, the admin CLI ($(BUILD)/bin/e8kvctl), and the
# tests of clients/ (sources in tests/clients/; the top Makefile includes only
# tests/*.mk, so their rules live here).

CTL_SRCS := clients/cli/ctl_main.c clients/cli/ctl_opt.c clients/cli/ctl_exit.c \
            clients/cli/ctl_out.c clients/cli/ctl_progress.c clients/cli/ctl_xfile.c \
            clients/cli/ctl_online.c clients/cli/ctl_export.c clients/cli/ctl_pbjson.c \
            clients/cli/ctl_bench.c clients/cli/ctl_view.c clients/cli/ctl_offline.c
CTL_OBJS := $(CTL_SRCS:%.c=$(BUILD)/obj/%.o)
CTL_BIN  := $(BUILD)/bin/e8kvctl
# Offline mode (--data-dir) reads the store directly: libe8store and libe8codec.
CTL_DEP_LIBS := $(BUILD)/lib/libe8store.a $(BUILD)/lib/libe8codec.a
CTL_LDLIBS  = $(KVC_LDLIBS) $(call pc_libs,jansson libcrypto libisal lmdb liburing libzstd) -lm

BINS += $(CTL_BIN)

$(CTL_OBJS): | $(PROTO_GEN_H)

$(CTL_BIN): $(CTL_OBJS) $(KVC_LIB) $(CTL_DEP_LIBS)
	@mkdir -p $(dir $@)
	$(CC) -o $@ $(CTL_OBJS) $(KVC_LIB) $(CTL_DEP_LIBS) $(LDFLAGS_BASE) $(CTL_LDLIBS)

.PHONY: install-e8kvctl
install: install-e8kvctl
install-e8kvctl: $(CTL_BIN)
	install -d $(DESTDIR)$(PREFIX)/bin
	install -m 755 $(CTL_BIN) $(DESTDIR)$(PREFIX)/bin/

# ---- tests (tests/clients/) ----
CFLAGS_tests += $(call pc_cflags,cmocka jansson grpc libprotobuf-c) -I$(PROTO_GEN)

KVCT_XFILE := $(BUILD)/tests/clients/test_ctl_xfile
KVCT_OUT   := $(BUILD)/tests/clients/test_ctl_out
KVCT_LIB   := $(BUILD)/tests/clients/test_libe8kv
KVCT_ASM   := $(BUILD)/tests/clients/test_kvc_asm
TEST_BINS += $(KVCT_XFILE) $(KVCT_OUT) $(KVCT_LIB) $(KVCT_ASM)

# (An explicit object list: a recipe-less pattern rule would add no prerequisite.)
$(patsubst %.c,$(BUILD)/obj/%.o,$(wildcard tests/clients/*.c)): | $(PROTO_GEN_H)

$(KVCT_XFILE): $(BUILD)/obj/tests/clients/test_ctl_xfile.o $(BUILD)/obj/clients/cli/ctl_xfile.o
	@mkdir -p $(dir $@)
	$(CC) -o $@ $^ $(LDFLAGS_BASE) $(call pc_libs,cmocka libcrypto libisal)

$(KVCT_OUT): $(BUILD)/obj/tests/clients/test_ctl_out.o $(BUILD)/obj/clients/cli/ctl_out.o \
             $(BUILD)/obj/clients/cli/ctl_progress.o
	@mkdir -p $(dir $@)
	$(CC) -o $@ $^ $(LDFLAGS_BASE) $(call pc_libs,cmocka jansson)

$(KVCT_LIB): $(BUILD)/obj/tests/clients/test_libe8kv.o $(KVC_LIB) $(KVC_CODEC)
	@mkdir -p $(dir $@)
	$(CC) -o $@ $(filter %.o,$^) $(KVC_LIB) $(LDFLAGS_BASE) $(call pc_libs,cmocka) $(KVC_LDLIBS)

$(KVCT_ASM): $(BUILD)/obj/tests/clients/test_kvc_asm.o $(KVC_LIB) $(KVC_CODEC)
	@mkdir -p $(dir $@)
	$(CC) -o $@ $(filter %.o,$^) $(KVC_LIB) $(LDFLAGS_BASE) $(call pc_libs,cmocka) $(KVC_LDLIBS)

# The fuzz target of the export-file reader; its corpus also runs in `make test`.
KVCF_XFILE := $(BUILD)/fuzz/fuzz_ctl_xfile
FUZZ_BINS += $(KVCF_XFILE)
$(KVCF_XFILE): tests/clients/fuzz_ctl_xfile.c clients/cli/ctl_xfile.c
	@mkdir -p $(dir $@)
	clang -std=c11 -g -O1 -D_GNU_SOURCE -I. -fsanitize=fuzzer,address,undefined $^ -o $@ \
	  $(call pc_libs,libcrypto libisal)

# libe8kv against a real daemon: run by tests/clients/test_ctl_e2e.py (it starts e8kvd).
KVCT_E2E := $(BUILD)/tests/clients/test_libe8kv_e2e
$(KVCT_E2E): $(BUILD)/obj/tests/clients/test_libe8kv_e2e.o $(KVC_LIB) $(KVC_CODEC)
	@mkdir -p $(dir $@)
	$(CC) -o $@ $(filter %.o,$^) $(KVC_LIB) $(LDFLAGS_BASE) $(call pc_libs,cmocka) $(KVC_LDLIBS)

# The fuzz target's corpus, replayed without libFuzzer, with the seeds' verdicts.
KVCT_REPLAY := $(BUILD)/tests/clients/replay_ctl_xfile
$(KVCT_REPLAY): $(BUILD)/obj/tests/clients/replay_ctl_xfile.o \
                $(BUILD)/obj/tests/clients/fuzz_ctl_xfile.o $(BUILD)/obj/clients/cli/ctl_xfile.o
	@mkdir -p $(dir $@)
	$(CC) -o $@ $^ $(LDFLAGS_BASE) $(call pc_libs,libcrypto libisal)

all: $(KVCT_E2E) $(KVCT_REPLAY)
# The CLI end to end (starts e8kvd from $(BUILD)/bin, runs test_libe8kv_e2e against it too).
TEST_CMDS += "$(KVCT_REPLAY) tests/clients/corpus_ctl_xfile" \
             "tests/clients/test_install.sh $(BUILD) '$(SAN)'" \
             "python3 tests/clients/test_ctl_e2e.py $(BUILD)"
