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

TEST_CMDS += "$(SAN_PY)$(QUALITY_ENV) $(PYTHON) -m pytest -q -p no:cacheprovider tests/python/test_codec_abi.py tests/python/test_codec_roundtrip.py tests/python/test_codec_fixture.py tests/python/test_codec_baselines.py"
TEST_CMDS += "$(SAN_PY)$(QUALITY_ENV) $(PYTHON) -m bench.quality.run --quick $(QUALITY_ARGS)"

# The full run on the GPU machine (bench/quality/device-run.sh, README "Full run on the GPU"):
# libe8codec.so with the two libraries it needs that the machine may lack (libzstd, libisal;
# its libcrypto is the machine's own), the gguf wheel, and WikiText-2 (checked, from data/).
GGUF_VERSION = $(shell $(PYTHON) -c "import importlib.metadata as m; print(m.version('gguf'))" 2>/dev/null)
.PHONY: quality-bundle
quality-bundle: $(BUILD)/lib/libe8codec.so
	rm -rf $(BUILD)/bundle
	../shared/tools/device-bundle $(BUILD)/bundle $<
	find $(BUILD)/bundle/lib -type f ! -name libe8codec.so ! -name libzstd.so.1 ! -name libisal.so.2 -delete
	strip --strip-debug $(BUILD)/bundle/lib/libe8codec.so
	mkdir -p $(BUILD)/bundle/whl $(BUILD)/wheels
	ls $(BUILD)/wheels/gguf-$(GGUF_VERSION)-*.whl >/dev/null 2>&1 || \
	  $(PYTHON) -m pip download -q --no-deps gguf==$(GGUF_VERSION) -d $(BUILD)/wheels
	cp $(BUILD)/wheels/gguf-$(GGUF_VERSION)-*.whl $(BUILD)/bundle/whl/
	$(PYTHON) data/wikitext.py > $(BUILD)/bundle/wikitext-2-raw-test.txt
	gzip -9 -f $(BUILD)/bundle/wikitext-2-raw-test.txt
	du -sh $(BUILD)/bundle

# The device run's code path (torch codecs, worker threads, batched scoring) on the CPU, tiny.
TEST_CMDS += "$(SAN_PY)$(QUALITY_ENV) $(PYTHON) -m bench.quality.fastrun --device cpu --windows 1 --prefix 64 --continuation 8 --probes 1 --workers 2 --zstd22-windows 1 --strict-bytes --model-cache $(BUILD)/cache/smollm2-f32 --out $(BUILD)/bench/fastrun-cpu/quality.json --plot $(BUILD)/bench/fastrun-cpu/quality_rd.png"
