"""A tiny random causal LM, a byte-level tokenizer with a chat template, and a toy benchmark.

They exist so the failure pipeline can be tested, demonstrated and benchmarked without any download: the model is
a 2-layer Llama with random weights from a fixed seed (its greedy output is gibberish, but deterministic), and the
toy benchmark's checker is a plain string rule. Nothing here is a real benchmark.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from failtrace.benchmarks.base import Item, LoadReport, Verdict
from failtrace.errors import FailtraceError

_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def toy_tokenizer() -> Any:
    """A byte-level tokenizer (259 ids: 3 specials + 256 bytes) with a ChatML-style template; EOS is <|im_end|>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {tok: i for i, tok in enumerate([*_SPECIALS, *alphabet])}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                  additional_special_tokens=["<|im_start|>"])
    tok.chat_template = _CHAT_TEMPLATE
    return tok


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one thread inside the block: tiny models are fastest so, and fight nobody for cores."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def toy_model(seed: int = 0, hidden_size: int = 64, layers: int = 2, dtype: Any = None, stops: bool = True) -> Any:
    """A random ``LlamaForCausalLM`` sized for the toy tokenizer (eval mode, no gradients).

    With ``stops`` the model emits EOS now and then (see :func:`_make_it_stop`), so completions end both ways.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok_len = len(_SPECIALS) + 256
    cfg = LlamaConfig(vocab_size=tok_len, hidden_size=hidden_size, num_hidden_layers=layers, num_attention_heads=4,
                      num_key_value_heads=2, intermediate_size=2 * hidden_size, max_position_embeddings=4096,
                      bos_token_id=None, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False)
    gen = torch.random.fork_rng()
    with gen:
        torch.manual_seed(seed)
        model = LlamaForCausalLM(cfg)
        # Larger-than-default weights give peaked, seed-specific next-token distributions (fewer near-ties).
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() == 2:
                    p.normal_(0.0, 0.15)
    model.generation_config.eos_token_id = 2
    model.generation_config.pad_token_id = 0
    model.eval()
    if stops:
        with one_thread():
            _make_it_stop(model)
    if dtype is not None:
        model.to(dtype)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _make_it_stop(model: Any, eos: int = 2) -> None:
    """Give EOS the unembedding row of a token the model picks often but rarely early, scaled up by 5%.

    Wherever greedy decoding would pick that token (with a positive logit), EOS now wins instead: completions stop
    after a few to a few dozen tokens, depending on the prompt, and the choice is still a deterministic function of
    the seed.
    """
    import collections

    import torch

    from failtrace.failures.generation import greedy_generate

    from failtrace.models.chat import apply_chat_template

    tok = toy_tokenizer()
    probes = [apply_chat_template(tok, it.prompt) for it in toy_items(12)]
    outs = greedy_generate(model, probes, 40, frozenset({eos}), 0)
    counts = collections.Counter(t for o in outs for t in o.token_ids if t >= 3)
    chosen = None
    for tok, _ in counts.most_common():
        first = sorted(o.token_ids.index(tok) if tok in o.token_ids else 99 for o in outs)
        if first[len(first) // 2] >= 5:
            chosen = tok
            break
    if chosen is None:  # pragma: no cover - every seed tried so far has one
        return
    with torch.no_grad():
        w = model.lm_head.weight
        w[eos] = w[chosen] * 1.05


def toy_loaded(seed: int = 0, dtype: str = "float32", name: str | None = None) -> Any:
    """The toy model and tokenizer as a :class:`~failtrace.models.LoadedModel` (no disk involved)."""
    import torch

    from failtrace.models.loading import LoadedModel

    torch_dtype = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16,
                   "float16": torch.float16}[dtype]
    return LoadedModel(model=toy_model(seed, dtype=torch_dtype), tokenizer=toy_tokenizer(),
                       name=name or f"toy-llama-seed{seed}", source="failtrace_testkit.toy", dtype=dtype,
                       device="cpu")


def save_toy_model(folder: str | Path, seed: int = 0) -> Path:
    """Write the toy model + tokenizer as a Hugging Face folder that ``load_model(folder)`` reads."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    toy_model(seed).save_pretrained(folder, safe_serialization=True)
    toy_tokenizer().save_pretrained(folder)
    return folder


@dataclass
class ToyBenchmark:
    """A benchmark whose checker is a string rule on the completion, for tests and demos.

    ``mode`` picks the rule, read from ``item.reference["needle"]``:
    ``contains`` (pass iff the needle occurs), ``prefix`` (pass iff the completion starts with it), ``never`` (always
    fail), ``unverifiable`` (the check cannot run). ``delay`` seconds are slept per check (to make runs slow enough to
    interrupt); ``unverifiable_after`` makes every check after the first N return unverifiable.
    Data files are JSONL with ``{"id", "prompt", "needle"}`` per line.
    """

    name: str = "toy"
    max_new_tokens: int = 24
    mode: str = "contains"
    delay: float = 0.0
    unverifiable_after: int | None = None
    calls: int = field(default=0, init=False)

    def load(self, source: str, limit: int | None = None) -> LoadReport:
        path = Path(source)
        if not path.is_file():
            raise FailtraceError(f"toy data file not found: {source}")
        items: list[Item] = []
        problems: list[str] = []
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                d = json.loads(line)
                items.append(Item(id=str(d["id"]), benchmark=self.name, prompt=d["prompt"],
                                  reference={"needle": d.get("needle", "")}))
            except (ValueError, KeyError, TypeError) as exc:
                problems.append(f"{source}:{n}: {type(exc).__name__}: {exc}")
            if limit is not None and len(items) >= limit:
                break
        return LoadReport(items=items, problems=problems)

    def check(self, item: Item, completion: str) -> Verdict:
        self.calls += 1
        if self.delay:
            time.sleep(self.delay)
        if self.unverifiable_after is not None and self.calls > self.unverifiable_after:
            return Verdict("unverifiable", ["toy checker switched off"])
        needle = str(item.reference.get("needle", ""))
        if self.mode == "unverifiable":
            return Verdict("unverifiable", ["toy checker cannot run"])
        if self.mode == "never":
            return Verdict("fail", ["never passes"])
        ok = completion.startswith(needle) if self.mode == "prefix" else needle in completion
        return Verdict("pass" if ok else "fail", [] if ok else [f"{self.mode} {needle!r} not satisfied"])


@dataclass
class OptionedToy(ToyBenchmark):
    """The toy checker whose rule (``mode``) is a constructor option that changes verdicts, declared as such
    (``checker_options``), so a collection run records it and the pair search must rebuild it."""

    name: str = "toy-optioned"

    def checker_options(self) -> dict[str, Any]:
        return {} if self.mode == "contains" else {"mode": self.mode}


def toy_items(n: int, benchmark: str = "toy", needle: str = "zz") -> list[Item]:
    """``n`` short distinct toy items."""
    return [Item(id=f"q{i:03d}", benchmark=benchmark, prompt=f"Question {i}: say {chr(97 + i % 26)}",
                 reference={"needle": needle}) for i in range(n)]
