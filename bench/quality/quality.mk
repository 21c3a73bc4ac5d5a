# bench/quality/quality.mk: the quality benchmark (issue 3) and the tests of e8kv.codec.
#
#   make bench-quality          W=128 windows x P in {512,1024,2048}, C=256 (hours on 2 cores)
#   make bench-quality QUICK=1  2 windows, P=512, 1 retrieval probe (the smoke test in make test)
# Both write $(BUILD)/bench/quality.json and $(BUILD)/bench/quality_rd.png, and fail (exit 1)
# when the identity codec is not exactly lossless, a number is NaN, or bytes were not counted.
# The dequantized SmolLM2 is cached in $(BUILD)/cache/smollm2-f32 (made once from the GGUF).

QUALITY_ENV  := PYTHONPATH=$(CURDIR):$(CURDIR)/clients/python \
                E8KV_LIB=$(abspath $(BUILD))/lib/libe8codec.so \
                E8KV_PY_GEN=$(abspath $(BUILD))/python/gen HF_HUB_OFFLINE=1
QUALITY_ARGS := --out $(BUILD)/bench/quality.json --plot $(BUILD)/bench/quality_rd.png \
                --model-cache $(BUILD)/cache/smollm2-f32

bench-quality: $(BUILD)/lib/libe8codec.so
	$(QUALITY_ENV) $(PYTHON) -m bench.quality.run $(if $(QUICK),--quick) $(QUALITY_ARGS)

TEST_CMDS += "$(QUALITY_ENV) $(PYTHON) -m pytest -q -p no:cacheprovider tests/python/test_codec_abi.py tests/python/test_codec_roundtrip.py tests/python/test_codec_fixture.py tests/python/test_codec_baselines.py"
TEST_CMDS += "$(QUALITY_ENV) $(PYTHON) -m bench.quality.run --quick $(QUALITY_ARGS)"
