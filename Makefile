# The two commands of the README:  make demo  (set up + end-to-end attribution)  and  make test  (set up + tests).
.PHONY: setup setup-tests demo test bench

setup:
	@bash scripts/setup.sh

# The same, plus Debian's chromium and nodejs for the browser tests.
setup-tests:
	@bash scripts/setup.sh --tests

demo: setup
	.venv/bin/failtrace demo --out out

# Whole suite on transformers 5, then the attribution tests (marker tf4) again on transformers 4.x.
test: setup-tests
	.venv/bin/python -m pytest -q -p no:cacheprovider
	PYTHONPATH=.venv/tf4 .venv/bin/python -m pytest -q -p no:cacheprovider -m tf4

bench: setup
	.venv/bin/python perf/bench_attribution.py
