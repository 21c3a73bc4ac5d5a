# codec/codec.mk: libe8codec (static and shared), its tests, fuzz target and bench.
#
#   $(BUILD)/lib/libe8codec.a    static, for e8kvd and the C client
#   $(BUILD)/lib/libe8codec.so   shared, for the Python bindings (ctypes)
#   make fuzz                    $(BUILD)/fuzz/e8c_fuzz_frame (clang libFuzzer)
#   make bench-codec [QUICK=1]   -> build/bench/codec.json
#
# codec/cuda/ has its own fragment; nothing here includes it.
# -ffp-contract=off: FORMAT.md fixes every rounding; no fused multiply-add.
# e8c_fast_avx2.c (-mavx2 -mf16c) and e8c_rans32_avx2.c (-mavx2) alone are
# built for AVX2 and run only where cpuid says so, so the library itself
# runs on any x86-64.

E8C_PKGS    := libzstd libisal libcrypto
E8C_SRCS    := $(filter-out codec/e8c_fast_avx2.c codec/e8c_rans32_avx2.c,$(wildcard codec/*.c))
E8C_OBJS    := $(E8C_SRCS:%.c=$(BUILD)/obj/%.o) $(BUILD)/obj/codec/e8c_fast_avx2.o \
               $(BUILD)/obj/codec/e8c_rans32_avx2.o
E8C_PIC_OBJS:= $(E8C_OBJS:$(BUILD)/obj/%.o=$(BUILD)/pic/%.o)
E8C_LIB     := $(BUILD)/lib/libe8codec.a
E8C_SO      := $(BUILD)/lib/libe8codec.so
E8C_LDLIBS   = $(E8C_LIB) $(call pc_libs,$(E8C_PKGS)) -lm -pthread

CFLAGS_codec += $(call pc_cflags,$(E8C_PKGS)) -ffp-contract=off -fno-fast-math
# -O3 for libe8codec's own objects only (same bytes as -O2; codec/cuda keeps its flags)
$(E8C_OBJS): CFLAGS_codec += -O3
CFLAGS_tests += $(call pc_cflags,cmocka)
# -falign-loops=32: the fast body's hot loops were 5-7 % slower or faster
# with unrelated code added before them (loop placement; e8c_ab, session 5)
$(BUILD)/obj/codec/e8c_fast_avx2.o: CFLAGS_codec += -mavx2 -mf16c -falign-loops=32
$(BUILD)/obj/codec/e8c_rans32_avx2.o: CFLAGS_codec += -mavx2

LIBS += $(E8C_LIB) $(E8C_SO)

$(E8C_LIB): $(E8C_OBJS)
	@mkdir -p $(dir $@)
	rm -f $@ && ar rcs $@ $^

# The objects are already -fPIC (CFLAGS_BASE); the .so links them directly.
$(E8C_SO): $(E8C_OBJS)
	@mkdir -p $(dir $@)
	$(CC) -shared $(LDFLAGS_BASE) -o $@ $^ $(call pc_libs,$(E8C_PKGS)) -lm -pthread

# ------------------------------------------------------------------ tests
E8C_TEST_SRCS := $(wildcard tests/codec/test_*.c)
E8C_TEST_BINS := $(E8C_TEST_SRCS:tests/codec/%.c=$(BUILD)/tests/codec/%)
E8C_TEST_HELP := $(BUILD)/obj/tests/codec/e8c_testgen.o
TEST_BINS += $(E8C_TEST_BINS) $(BUILD)/tests/codec/e8c_corpus_replay

$(BUILD)/tests/codec/%: $(BUILD)/obj/tests/codec/%.o $(E8C_TEST_HELP) $(E8C_LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS_BASE) -o $@ $< $(E8C_TEST_HELP) $(E8C_LDLIBS) $(call pc_libs,cmocka)

# The fuzz target's seed corpus (tests/codec/corpus, its default), replayed with gcc in make test.
$(BUILD)/tests/codec/e8c_corpus_replay: $(BUILD)/obj/tests/codec/e8c_fuzz_frame.o \
        $(BUILD)/obj/tests/codec/e8c_replay_main.o $(E8C_TEST_HELP) $(E8C_LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS_BASE) -o $@ $(filter %.o,$^) $(E8C_LDLIBS)

# ------------------------------------------------------------------ fuzz
# clang + libFuzzer + ASan/UBSan build of the library and the target.
E8C_FUZZ_CFLAGS  = $(CSTD) -g -O1 -I. -D_GNU_SOURCE -ffp-contract=off \
                   -fsanitize=fuzzer-no-link,address,undefined $(call pc_cflags,$(E8C_PKGS))
E8C_FUZZ_OBJS   := $(patsubst %.c,$(BUILD)/fuzzobj/%.o,$(E8C_SRCS) codec/e8c_fast_avx2.c codec/e8c_rans32_avx2.c \
                     tests/codec/e8c_fuzz_frame.c tests/codec/e8c_testgen.c)
FUZZ_BINS += $(BUILD)/fuzz/e8c_fuzz_frame
$(BUILD)/fuzzobj/codec/e8c_fast_avx2.o: E8C_FUZZ_CFLAGS += -mavx2 -mf16c
$(BUILD)/fuzzobj/codec/e8c_rans32_avx2.o: E8C_FUZZ_CFLAGS += -mavx2
$(BUILD)/fuzzobj/%.o: %.c
	@mkdir -p $(dir $@)
	clang $(E8C_FUZZ_CFLAGS) -c $< -o $@
$(BUILD)/fuzz/e8c_fuzz_frame: $(E8C_FUZZ_OBJS)
	@mkdir -p $(dir $@)
	clang -fsanitize=fuzzer,address,undefined -o $@ $^ $(call pc_libs,$(E8C_PKGS)) -lm -pthread

# ------------------------------------------------------------------ bench
E8C_BENCH := $(BUILD)/bin/e8c_bench
BINS += $(E8C_BENCH)
$(E8C_BENCH): $(BUILD)/obj/tests/codec/e8c_bench.o $(BUILD)/obj/tests/codec/e8c_floors.o $(E8C_TEST_HELP) $(E8C_LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS_BASE) -o $@ $(filter %.o,$^) $(E8C_LDLIBS) $(call pc_libs,jansson)

# e8c_ab: two libe8codec builds in one process (tests/codec/e8c_ab.c, NOTES.md)
E8C_AB := $(BUILD)/bin/e8c_ab
BINS += $(E8C_AB)
$(E8C_AB): $(BUILD)/obj/tests/codec/e8c_ab.o
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS_BASE) -o $@ $^ -ldl -lm

bench-codec: $(E8C_BENCH)
	@mkdir -p build/bench
	$(E8C_BENCH) $(if $(QUICK),--quick) --out build/bench/codec.json
fuzz: $(BUILD)/fuzz/e8c_fuzz_frame
$(BUILD)/obj/tests/codec/e8c_bench.o: CFLAGS_tests += $(call pc_cflags,jansson)
# --floors includes the fast body (codec/e8c_fast_body.h) with AVX2, the
# library's flags (no contraction: FMA only where written), and runs only
# where cpuid says AVX2 (its FMA loop only where cpuid says FMA)
$(BUILD)/obj/tests/codec/e8c_floors.o: CFLAGS_tests += -mavx2 -mf16c -mfma -O3 -ffp-contract=off -fno-fast-math \
        $(call pc_cflags,$(E8C_PKGS))
