# The two commands of the README:  make demo  (set up + end-to-end attribution)  and  make test  (set up + tests).
.PHONY: setup demo test test-tf5 test-tf4 bench

setup:
	@bash scripts/setup.sh

demo: setup
	.venv/bin/failtrace demo --out out

# Whole suite on transformers 5, then the attribution tests (marker tf4) again on transformers 4.x.
test: setup
	.venv/bin/python -m pytest -q -p no:cacheprovider
	PYTHONPATH=.venv/tf4 .venv/bin/python -m pytest -q -p no:cacheprovider -m tf4

bench: setup
	.venv/bin/python perf/bench_attribution.py
