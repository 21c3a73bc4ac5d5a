# store/store.mk: libe8store (the block store) and its tests.
#   $(BUILD)/lib/libe8store.a       the library (LMDB, liburing, isa-l, OpenSSL)
#   $(BUILD)/tests/store/test_*     cmocka tests, each runs its suite on both io engines
#   make bench-store [QUICK=1]      build/bench/store.json (whatever BUILD is), store vs fio
#   make tsan                       store tests under ThreadSanitizer (tsan-run)

STORE_PC      := lmdb liburing libisal openssl
CFLAGS_store  += $(call pc_cflags,$(STORE_PC))
STORE_LDLIBS   = $(call pc_libs,$(STORE_PC))

STORE_SRCS := $(wildcard store/*.c)
STORE_OBJS := $(patsubst %.c,$(BUILD)/obj/%.o,$(STORE_SRCS))
STORE_LIB  := $(BUILD)/lib/libe8store.a

$(STORE_LIB): $(STORE_OBJS)
	@mkdir -p $(dir $@)
	rm -f $@ && ar rcs $@ $^

LIBS += $(STORE_LIB)

# ---------------------------------------------------------------- tests
STORE_TEST_DIR   := $(BUILD)/tests/store
STORE_TEST_UTIL  := $(BUILD)/obj/tests/store/store_test_util.o
STORE_TEST_NAMES := test_store_basic test_store_evict test_store_fault test_store_concurrency test_store_crash \
                    test_store_space test_store_purge
STORE_TESTS      := $(addprefix $(STORE_TEST_DIR)/,$(STORE_TEST_NAMES))
STORE_TEST_OBJS  := $(patsubst %,$(BUILD)/obj/tests/store/%.o,$(STORE_TEST_NAMES)) $(STORE_TEST_UTIL)

$(STORE_TEST_OBJS): CFLAGS_tests += $(call pc_cflags,cmocka openssl)

$(STORE_TEST_DIR)/%: $(BUILD)/obj/tests/store/%.o $(STORE_TEST_UTIL) $(STORE_LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS_BASE) $^ -o $@ $(STORE_LDLIBS) $(call pc_libs,cmocka)

TEST_BINS += $(STORE_TESTS)

# ---------------------------------------------------------------- ThreadSanitizer
# `make tsan` runs `tsan-run` with BUILD=build/tsan and SAN=-fsanitize=thread. Any fragment may
# append test programs to TSAN_TEST_BINS; the list is read when the recipe runs, so programs of
# fragments included after this one count too. (The crash test forks and SIGKILLs, which TSan
# does not add to; it stays out.)
TSAN_TEST_BINS += $(addprefix $(STORE_TEST_DIR)/,test_store_concurrency test_store_basic \
                    test_store_evict test_store_fault)

.PHONY: tsan-run
tsan-run:
	$(MAKE) BUILD=$(BUILD) OPT="$(OPT)" SAN="$(SAN)" $(TSAN_TEST_BINS)
	TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1 $(TSAN_OPTIONS)" \
	  tools/run-tests.sh $(BUILD) $(TSAN_TEST_BINS) --

# ---------------------------------------------------------------- benchmark
# make bench-store [QUICK=1] [STORE_BENCH_ENGINE=pwrite]: 512 (QUICK: 128) records of 1 MiB, one
# fdatasync per put of 8, by 1 writer and by 2 writers, store vs the fio jobs of
# bench/store/store.fio on the same directory, in one run; medians of 5 rounds (QUICK: 1)
# because the machine and its disk are shared. Table on stdout, build/bench/store.json.
STORE_BENCH := $(BUILD)/bench/bench_store
STORE_BENCH_ENGINE ?= io_uring
$(BUILD)/obj/tests/store/bench_store.o: CFLAGS_tests += $(call pc_cflags,jansson)
$(STORE_BENCH): $(BUILD)/obj/tests/store/bench_store.o $(STORE_LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS_BASE) $^ -o $@ $(STORE_LDLIBS) $(call pc_libs,jansson)

bench-store: $(STORE_BENCH)
	@mkdir -p build/bench
	$(STORE_BENCH) $(BUILD)/bench/store-data $(if $(QUICK),128,512) 8 \
	  build/bench/store.json $(STORE_BENCH_ENGINE) 2 $(if $(QUICK),1,5) bench/store/store.fio

# make bench-store-small [W=16] [N=200] [R=4096]: W writers each putting N records of R bytes
# one per call (many small groups: what group commit and sync coalescing are for), fresh store
# in $(BUILD)/bench/store-small; one line on stdout.
STORE_BENCH_SMALL := $(BUILD)/bench/bench_store_small
$(STORE_BENCH_SMALL): $(BUILD)/obj/tests/store/bench_store_small.o $(STORE_LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS_BASE) $^ -o $@ $(STORE_LDLIBS)

bench-store-small: $(STORE_BENCH_SMALL)
	rm -rf $(BUILD)/bench/store-small
	$(STORE_BENCH_SMALL) $(BUILD)/bench/store-small $(or $(W),16) $(or $(N),200) $(or $(R),4096)
	rm -rf $(BUILD)/bench/store-small
.PHONY: bench-store-small
