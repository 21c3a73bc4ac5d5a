# tests/demo.mk: tests of the demo's own code (demo/) that need no model (make demo is in
# clients/python/python.mk; tests/demo/test_demo_guard.sh checks what it builds and refuses).
TEST_CMDS += "$(E8KV_VENV)/bin/python -m pytest -q -p no:cacheprovider tests/demo/test_demo_report.py"
