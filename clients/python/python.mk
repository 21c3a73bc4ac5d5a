# clients/python/python.mk: the e8kv Python package, its tests, and `make demo`.
#
# The package is used in-tree (PYTHONPATH=clients/python); its gRPC stubs are generated
# from proto/ on first import into $(BUILD)/python/gen (E8KV_PY_GEN), never committed.
# `pip install clients/python` builds a wheel that carries the stubs instead.
#
#   make demo     SmolLM2's KV cache through e8kvd and back; numbers printed, $(BUILD)/demo.json
#   make test     runs tests/python (pytest) against a real e8kvd from $(BUILD)/bin

PY_ENV := PYTHONPATH=$(CURDIR)/clients/python E8KV_PY_GEN=$(abspath $(BUILD))/python/gen \
          E8KV_BUILD=$(abspath $(BUILD)) HF_HUB_OFFLINE=1

# What the demo runs and loads: e8kvd, libe8codec.so (e8kv.codec) and libe8kv.so (the
# fingerprint conversion e8kv.codec needs to encode in the client, and the native fetch).
# Literal paths: daemon/daemon.mk and codec/codec.mk are included after this fragment.
PY_NEEDS := $(BUILD)/bin/e8kvd $(BUILD)/lib/libe8codec.so $(BUILD)/lib/libe8kv.so

TEST_CMDS += "$(SAN_PY)$(PY_ENV) $(E8KV_VENV)/bin/python -m pytest -q -p no:cacheprovider --ignore-glob='tests/python/test_codec_*' tests/python"

# The demo builds what it loads and refuses raw KV transfers (tests/demo/test_demo_guard.sh).
TEST_CMDS += "tests/demo/test_demo_guard.sh $(E8KV_VENV)/bin/python"

# e8kvctl too (a dozen small files beyond what the demo loads): the README's next steps use it.
demo: $(PY_NEEDS) $(BUILD)/bin/e8kvctl
	$(PY_ENV) $(PYTHON) demo/e8kv_demo.py --build $(BUILD)
