# bench/e2e/e2e.mk: the end-to-end benchmark (issue 9) and the CUDA codec's shared library.
#
#   $(BUILD)/lib/libe8codec_cuda.so  libe8codec_cuda.a + libe8codec.a as one shared library, for
#                                    the Python binding e8kv.cuda (ctypes); built where nvcc exists
#   make bench-e2e                   TTFT recompute vs restore through e8kvd (bench/e2e/README.md):
#                                    build/bench/e2e.json, e2e_ttft.png, e2e_detail.json
#   make e2e-bundle                  here: e8kvd + both codec libraries + libe8kv.so + the shared libraries the
#                                    GPU machine lacks + generated gRPC stubs (+ wheels from
#                                    $(BUILD)/wheels if present) into $(BUILD)/bundle
#   GPU host: make bench-e2e E2E_BUNDLE=build/e2e/bundle   (runs from the bundle, builds nothing)
#
# Literal paths below: this fragment is read before codec/ (the fragments are sorted by path).

E2E_BUNDLE ?=
E2E_ARGS   ?=
# libe8kv.so: e8kv.codec's fingerprint conversion and the restore's C fetch (e8kv.fetch);
# the bundle then also holds its gRPC/absl shared libraries (run.sh links them for Python).
E2E_NEEDS  := $(BUILD)/bin/e8kvd $(BUILD)/lib/libe8codec.so $(BUILD)/lib/libe8kv.so

ifneq ($(strip $(NVCC)),)
E2E_CUDA_SO := $(BUILD)/lib/libe8codec_cuda.so
LIBS        += $(E2E_CUDA_SO)
E2E_NEEDS   += $(E2E_CUDA_SO)

# cudart is linked statically (as in codec/cuda/cuda.mk); the objects are all -fPIC.
$(E2E_CUDA_SO): $(BUILD)/lib/libe8codec_cuda.a $(BUILD)/lib/libe8codec.a
	@mkdir -p $(dir $@)
	$(CC) -shared $(LDFLAGS_BASE) -o $@ -Wl,--whole-archive $^ -Wl,--no-whole-archive \
	  $(call pc_libs,libzstd libisal libcrypto) -L$(patsubst %/bin/nvcc,%,$(NVCC))/lib64 \
	  -lcudart_static -ldl -lrt -lstdc++ -lm -pthread
endif

# bench/e2e/wheels.txt: wheels for the GPU machine's Python 3.12, downloaded when missing
E2E_WHEEL_TAGS := --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any

.PHONY: e2e-bundle e2e-wheels
e2e-wheels:
	@mkdir -p $(BUILD)/wheels
	sed -e 's/#.*//' bench/e2e/wheels.txt | while read -r req; do \
	  [ -n "$$req" ] || continue; n=$${req%%==*}; v=$${req##*==}; \
	  ls $(BUILD)/wheels/$$n-$$v-*.whl >/dev/null 2>&1 || \
	  $(PYTHON) -m pip download -q --no-deps --only-binary=:all: $(E2E_WHEEL_TAGS) \
	    -d $(BUILD)/wheels "$$req" || exit 1; done

e2e-bundle: $(E2E_NEEDS) e2e-wheels
	rm -rf $(BUILD)/bundle
	../shared/tools/device-bundle $(BUILD)/bundle $(E2E_NEEDS)
	# our own binaries without their debug sections (-g): ~0.55 MB less after xz, which the
	# two 64 MiB device calls of split-model.sh need
	strip --strip-debug $(BUILD)/bundle/bin/* $(BUILD)/bundle/lib/libe8*.so
	$(PYTHON) clients/python/e8kv/_protogen.py proto $(BUILD)/bundle/py
	mkdir -p $(BUILD)/bundle/whl
	sed -e 's/#.*//' bench/e2e/wheels.txt | while read -r req; do \
	  [ -n "$$req" ] || continue; n=$${req%%==*}; v=$${req##*==}; \
	  cp $(BUILD)/wheels/$$n-$$v-*.whl $(BUILD)/bundle/whl/ || exit 1; done
	du -sh $(BUILD)/bundle

bench-e2e: $(if $(E2E_BUNDLE),,$(E2E_NEEDS))
	bench/e2e/run.sh "$(if $(E2E_BUNDLE),$(E2E_BUNDLE),$(BUILD))" build/bench $(E2E_ARGS)

# CPU test: a tiny Llama through e8kvd (unix socket and TCP), CPU codec, the decision included.
TEST_CMDS += "$(SAN_PY)bench/e2e/run.sh $(BUILD) $(BUILD)/e2e-test --cpu-test"
# e8kv.cuda's host-side parts (chunk container, item records) on the CPU
TEST_CMDS += "$(SAN_PY)PYTHONPATH=$(CURDIR)/clients/python E8KV_PY_GEN=$(abspath $(BUILD))/python/gen E8KV_LIB=$(abspath $(BUILD))/lib/libe8codec.so $(E8KV_VENV)/bin/python -m pytest -q -p no:cacheprovider bench/e2e/test_e2e_cuda_glue.py"
