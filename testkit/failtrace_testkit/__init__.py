"""Test and benchmark scaffolding, kept out of the failtrace package: tiny random models, a byte-level toy tokenizer,
a toy benchmark. The pipeline never imports it; tests, perf scripts and examples do (installed by scripts/setup.sh)."""
