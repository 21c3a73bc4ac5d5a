# codec/cuda/cuda.mk: the CUDA half of the codec (libe8codec_cuda), its GPU tests and benchmark.
#
# Built only where nvcc exists (the top Makefile sets NVCC to its path, or to nothing). Without
# nvcc this fragment adds nothing, so CPU-only builds are untouched.
#
# The GPU programs are compiled by `make` (so CI, which has nvcc but no GPU, checks that they
# build) but never run by `make test`. They run on a GPU machine, "build here, bundle, run there":
#   here:       make BUILD=build/cuda gpu-bundle           # builds, packs .devbundle/ (bins + libs)
#   GPU host:   make test-gpu  GPU_BIN=.devbundle/bin       # tests (incl. compute-sanitizer)
#               make bench-gpu GPU_BIN=.devbundle/bin       # writes build/bench/gpu.json
# With GPU_BIN unset, test-gpu and bench-gpu build first and run from $(BUILD)/bin (a machine
# with both a GPU and the full build dependencies).
#
# Floating point: kernels are compiled with --fmad=false and IEEE division/sqrt (no fast math)
# so that every float operation rounds exactly like the CPU reference's C code; that is what
# makes the GPU's frames byte-identical to the CPU's (see codec/cuda/e8cu_device.cuh).

ifneq ($(strip $(NVCC)),)
# the CPU codec (codec/codec.mk) packs and unpacks our frames: nothing here without it
ifdef E8C_LIB

CUDA_HOME  ?= $(patsubst %/bin/nvcc,%,$(NVCC))
CUDA_ARCH  ?= -gencode arch=compute_90,code=sm_90 -gencode arch=compute_90,code=compute_90
NVCCFLAGS  ?= -O3 -std=c++17 $(CUDA_ARCH) --fmad=false -prec-div=true -prec-sqrt=true \
              -Xcompiler -Wall,-Wextra,-Werror,-fPIC -Werror all-warnings -I. -MMD -MP
CUDA_CFLAGS = -I$(CUDA_HOME)/include
CUDA_LIBS   = -L$(CUDA_HOME)/lib64 -lcudart_static -ldl -lrt -lstdc++
CFLAGS_codec += $(CUDA_CFLAGS)
CFLAGS_tests += $(CUDA_CFLAGS) $(call pc_cflags,cmocka)
CFLAGS_bench += $(CUDA_CFLAGS) $(call pc_cflags,jansson)

E8CU_CU   := $(wildcard codec/cuda/*.cu)
E8CU_C    := $(wildcard codec/cuda/*.c)
E8CU_OBJS := $(E8CU_CU:%.cu=$(BUILD)/obj/%.cu.o) $(E8CU_C:%.c=$(BUILD)/obj/%.o)
E8CU_LIB  := $(BUILD)/lib/libe8codec_cuda.a
LIBS      += $(E8CU_LIB)

$(BUILD)/obj/%.cu.o: %.cu
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCCFLAGS) -c $< -o $@

$(E8CU_LIB): $(E8CU_OBJS)
	@mkdir -p $(dir $@)
	rm -f $@ && ar rcs $@ $^

# GPU programs: tests/gpu/test_*.c (one program each, plus tests/gpu/*.cu helpers) and
# bench/gpu/*.c. They link the CPU codec too (byte-identity checks, packing, CPU throughput).
GPU_DEPLIBS   = $(E8CU_LIB) $(E8C_LIB)
GPU_LDLIBS    = $(GPU_DEPLIBS) $(call pc_libs,libzstd libisal libcrypto) $(CUDA_LIBS) -lm -pthread
GPU_TEST_SRCS := $(wildcard tests/gpu/test_*.c)
GPU_TEST_BINS := $(GPU_TEST_SRCS:tests/gpu/%.c=$(BUILD)/bin/%)
GPU_TEST_CU   := $(wildcard tests/gpu/*.cu)
GPU_TEST_CUO  := $(GPU_TEST_CU:%.cu=$(BUILD)/obj/%.cu.o)
GPU_TEST_HELP := $(patsubst %.c,$(BUILD)/obj/%.o,$(filter-out $(GPU_TEST_SRCS),$(wildcard tests/gpu/*.c))) \
                 $(E8C_TEST_HELP)
GPU_BENCH_BIN := $(BUILD)/bin/e8cu_bench
BINS          += $(GPU_TEST_BINS) $(GPU_BENCH_BIN)

$(GPU_TEST_BINS): $(BUILD)/bin/%: $(BUILD)/obj/tests/gpu/%.o $(GPU_TEST_CUO) $(GPU_TEST_HELP) $(GPU_DEPLIBS)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS_BASE) $< $(GPU_TEST_CUO) $(GPU_TEST_HELP) $(GPU_LDLIBS) $(call pc_libs,cmocka) -o $@

$(GPU_BENCH_BIN): $(patsubst %.c,$(BUILD)/obj/%.o,$(wildcard bench/gpu/*.c)) $(E8C_TEST_HELP) $(GPU_DEPLIBS)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS_BASE) $(filter %.o,$^) $(GPU_LDLIBS) $(call pc_libs,jansson) -o $@

GPU_BIN ?=
GPU_RUN_BIN = $(if $(GPU_BIN),$(GPU_BIN),$(BUILD)/bin)

.PHONY: gpu-bundle
gpu-bundle: $(GPU_TEST_BINS) $(GPU_BENCH_BIN)
	rm -rf .devbundle
	../shared/tools/device-bundle .devbundle $^

test-gpu: $(if $(GPU_BIN),,$(GPU_TEST_BINS))
	codec/cuda/gpu-run.sh test $(GPU_RUN_BIN) $(BUILD)

bench-gpu: $(if $(GPU_BIN),,$(GPU_BENCH_BIN))
	codec/cuda/gpu-run.sh bench $(GPU_RUN_BIN) build

else
test-gpu bench-gpu gpu-bundle:
	@echo "$@: codec/codec.mk (the CPU codec) is missing" >&2; exit 1
endif
else
test-gpu bench-gpu gpu-bundle:
	@echo "$@: nvcc not found: the CUDA codec is not built on this machine" >&2; exit 1
endif

# CPU-only, with or without nvcc (runs in make test and CI): a C emulation of the quantize
# kernel's fast E8 path (e8cu_fastq.cuh) against the reference e8c_ref_e8_block.
ifdef E8C_LIB
E8CU_EMUL_BIN := $(BUILD)/tests/gpu/test_e8cu_emul
TEST_BINS     += $(E8CU_EMUL_BIN)

$(E8CU_EMUL_BIN): $(BUILD)/obj/tests/gpu/cpu/test_e8cu_emul.o $(E8C_TEST_HELP) $(E8C_LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS_BASE) -o $@ $< $(E8C_TEST_HELP) $(E8C_LDLIBS) $(call pc_libs,cmocka) -lm

# every fp32 operation rounds once, as on the device (no contraction into fma)
$(BUILD)/obj/tests/gpu/cpu/test_e8cu_emul.o: CFLAGS_tests += -ffp-contract=off -fno-fast-math
endif
