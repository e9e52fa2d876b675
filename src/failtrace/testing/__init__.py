"""Test and demo scaffolding, kept out of the pipeline: tiny random models, a byte-level toy tokenizer, a toy
benchmark. Nothing here is used by the stages themselves; tests, perf scripts and examples import it."""
