# e8kv: top-level Makefile.
#
# Each part of the tree adds its own rules in a fragment named after it
# (codec/codec.mk, store/store.mk, daemon/daemon.mk, clients/c/client.mk,
# clients/cli/cli.mk, ...). A fragment appends to:
#   LIBS        static libraries it builds        (built by `make`)
#   BINS        programs                          (built by `make`)
#   TEST_BINS   C test programs, run by `make test` (each prints its own summary)
#   TEST_CMDS   other test commands (shell lines), run by `make test`
#   FUZZ_BINS   libFuzzer targets (built by `make fuzz`, clang only)
# Everything is built under $(BUILD) (default build/; `make asan` uses build/asan),
# so several builds can live side by side: BUILD=build-mine make ...
#
# Dependencies are found with pkg-config only. `make deps` installs them.

BUILD   ?= build
CC      ?= cc
OPT     ?= -O2 -g
SAN     ?=
PYTHON  ?= $(E8KV_VENV)/bin/python
# SAN_PY: put first (no space after it) on a test command that starts Python which loads our
# libraries through ctypes; empty in a normal build. Python is not ASan-built, so under
# `make asan` (which sets SAN_PY_ENV; SAN_PY is it plus one space) the ASan runtime is preloaded
# (it must come first in the initial library list; libstdc++ with it, or ASan's __cxa_throw
# interceptor finds no real one and aborts at the first C++ exception, e.g. in matplotlib), and
# leak detection is off for that process tree (CPython leaks by design at exit; an e8kvd the
# tests start inherits this). C test programs and commands without SAN_PY keep LeakSanitizer on.
SAN_PY_ENV ?=
SAN_PY  := $(if $(SAN_PY_ENV),$(SAN_PY_ENV) )
export E8KV_VENV ?= $(HOME)/.cache/e8kv-venv

WARN    := -Wall -Wextra -Werror
CSTD    := -std=c11
CFLAGS_BASE = $(CSTD) $(WARN) $(OPT) $(SAN) -D_GNU_SOURCE -fPIC -I. -MMD -MP
LDFLAGS_BASE = $(SAN) -pthread

# pkg-config is slow with grpc (1.5-3 s a query on a loaded 2-core VM: absl's many .pc files),
# so it runs at most once per package and kind (--cflags, --libs) per make invocation, and only
# when a value is used: $(call pc_cflags,a b) is pkg-config's answer for a, then for b (each
# answer is complete on its own), each kept in PC_cflags_<package> / PC_libs_<package> after its
# first use. Fragments use pc_cflags/pc_libs in recipes, recursive (`=`) variables and
# target-specific `+=` only, never in a `:=` assignment: that would run pkg-config while the
# Makefile is read, for every goal (`make deps` on a machine without the packages too).
pc_one    = $(if $(filter undefined,$(origin PC_$(1)_$(2))),$(eval PC_$(1)_$(2) := $$(shell pkg-config --$(1) $(2))))$(PC_$(1)_$(2))
pc_cflags = $(strip $(foreach p,$(1),$(call pc_one,cflags,$(p))))
pc_libs   = $(strip $(foreach p,$(1),$(call pc_one,libs,$(p))))

# nvcc is optional: the CUDA half of the codec is built only where it exists.
NVCC    ?= $(shell command -v nvcc 2>/dev/null)

LIBS      :=
BINS      :=
TEST_BINS :=
TEST_CMDS :=
FUZZ_BINS :=

.PHONY: all deps test asan tsan fuzz clean bench-codec bench-store bench-daemon \
        bench-quality bench-gpu bench-e2e test-gpu demo

all:

# Fragments: every *.mk under the tree, in a fixed order (codec and store first).
MK_FILES := $(sort $(wildcard codec/*.mk codec/*/*.mk store/*.mk daemon/*.mk clients/*/*.mk tests/*.mk bench/*.mk bench/*/*.mk))
include $(MK_FILES)

all: $(LIBS) $(BINS) $(TEST_BINS)

# libFuzzer targets of every part (clang); each part's corpus is replayed by `make test`.
fuzz: $(FUZZ_BINS)

deps:
	tools/deps.sh

# make test: every C test program and every test command; one summary line at the end.
test: all
	@tools/run-tests.sh $(BUILD) $(TEST_BINS) -- $(TEST_CMDS)

# AddressSanitizer + UBSan build of everything, running the same tests.
asan:
	$(MAKE) BUILD=build/asan OPT="-O1 -g" \
	  SAN="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all" \
	  SAN_PY_ENV="LD_PRELOAD=$(shell $(CC) -print-file-name=libasan.so):$(shell $(CC) -print-file-name=libstdc++.so.6) ASAN_OPTIONS=detect_leaks=0" test

# ThreadSanitizer build (targets that opt in through TSAN_TEST_BINS).
tsan:
	$(MAKE) BUILD=build/tsan OPT="-O1 -g" SAN="-fsanitize=thread" tsan-run

clean:
	rm -rf $(BUILD)

$(BUILD)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_BASE) $(CFLAGS_$(firstword $(subst /, ,$<))) -c $< -o $@

-include $(shell find $(BUILD)/obj -name '*.d' 2>/dev/null)
