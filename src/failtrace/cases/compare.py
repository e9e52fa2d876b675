"""Cross-model comparison: re-score each clean case of one model on other models, from the same strings.

For each case of the first (reference) model: the context is rebuilt from *text* on every other model (the item's
prompt through that model's chat template, thinking on where the reference's collection had it and the template
has the mode, then the answer prefix decoded with the reference tokenizer and encoded with the other one); the target
and contrast are the case's decoded token strings, which must each be exactly one token in the other tokenizer, the
answer prefix joined with each must tokenize as the prefix's tokens then that one token (:func:`joins_apart`), and the
context must fit the other model's positions (else the row says ``mapped=false`` with null ids and a note). On a
mapped case:

* Δℓ = logit(target) − logit(contrast) at the rebuilt context's last index, from a plain forward pass;
* AttnLRP input relevance for that objective, its sums per segment (the other tokenizer's own segmentation), and
  k* by the case's masking spec (:func:`failtrace.analysis.masking.flip_search`).

The reference model gets a row too, copied from the case (its tokens, Δℓ, attnlrp segment relevance and k*), so the
table holds every model's numbers side by side. Rows are keyed by (case id, model content fingerprint).
Models are loaded one at a time (a 1.5B model in fp32 takes ~6 GB).
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from failtrace.cases.record import Case
from failtrace.errors import FailtraceError
from failtrace.progress import tracked
from failtrace.store.comparisons import done_comparisons, write_comparison
from failtrace.store.store import ResultsStore


@dataclass
class CompareSummary:
    """What one ``compare`` call did, per model name."""

    cases: int = 0
    case_ids: list[str] = field(default_factory=list)
    fingerprints: dict[str, str] = field(default_factory=dict)  # per model name: the rows' model_fingerprint
    written: dict[str, int] = field(default_factory=dict)
    skipped: int = 0
    unmapped: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


def reference_row(case: Case, model_name: str) -> dict[str, Any]:
    """The reference model's row, straight from the stored case (attnlrp's segment relevance and k*)."""
    attn = case.methods.get("attnlrp")
    return {"case_id": case.case_id, "model_fingerprint": case.model_fingerprint, "model": model_name,
            "item_id": case.item_id, "benchmark": case.benchmark, "reference": True, "mapped": True,
            "token_ids": list(case.token_ids), "prompt_length": case.prompt_length, "position": case.position,
            "target_text": case.target_text, "contrast_text": case.contrast_text, "target_id": case.target_id,
            "contrast_id": case.contrast_id, "delta_logit": case.delta_logit,
            "input_relevance": attn.input_relevance if attn else None,
            "segment_relevance": attn.segment_relevance if attn else {},
            "flip_curve": attn.flip_curve if attn else None,
            "flip_k": attn.flip_k if attn else None, "step": None, "split": None, "notes": [], "seconds": 0.0,
            "tokens": list(case.tokens), "special_mask": list(case.special_mask),
            "flip_tops": attn.flip_tops if attn and attn.tops_recorded else None,
            "flip_top_texts": attn.flip_top_texts if attn and attn.tops_recorded else None}


def one_token(tokenizer: Any, text: str) -> int | None:
    """The id of ``text`` when it is exactly one token in ``tokenizer`` (and decodes back to itself), else None."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    if len(ids) != 1:
        return None
    back = tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    return int(ids[0]) if back == text else None


def joins_apart(tokenizer: Any, prefix: str, prefix_ids: Sequence[int], token_id: int, text: str) -> bool:
    """Whether ``prefix + text`` tokenizes otherwise than the prefix's ids then ``text``'s one token: this model
    would not reach that token from this context (Gemma writes "\n" "    " "return" where the rebuilt context ends in
    "\n   " and the case's target is " return"), so a Δℓ between two such tokens compares what it never sees."""
    joined = tokenizer.encode(prefix + text, add_special_tokens=False)
    return [int(t) for t in joined] != [int(t) for t in prefix_ids] + [int(token_id)]


def rebuild_context(tokenizer: Any, item: Any, answer_prefix: str, thinking: bool = False) -> tuple[list[int], int]:
    """(context ids, prompt length) of the item's prompt + answer prefix in another model's tokenisation, its chat
    template's thinking mode as the reference's collection ran (``thinking``)."""
    from failtrace.models.chat import apply_chat_template

    if getattr(tokenizer, "chat_template", None):
        prompt = apply_chat_template(tokenizer, item.prompt, thinking=thinking)
    else:  # a base model without a template: the plain prompt text (noted on the row)
        text = item.prompt if isinstance(item.prompt, str) else "\n".join(m["content"] for m in item.prompt)
        prompt = tokenizer.encode(text, add_special_tokens=True)
    prefix = tokenizer.encode(answer_prefix, add_special_tokens=False) if answer_prefix else []
    return prompt + [int(t) for t in prefix], len(prompt)


def rescore(lm: Any, case: Case, item: Any, answer_prefix: str, model_name: str, fingerprint: str,
            thinking: bool = False) -> dict[str, Any]:
    """One comparison row for a non-reference model (see the module docstring). ``thinking``: the reference's
    collection ran with thinking on; the context is rebuilt so where this model's template has a thinking mode."""
    from failtrace.attribution.inputs import decode_tokens, special_ids
    from failtrace.models.chat import has_thinking_mode
    from failtrace.models.limits import context_length

    t0 = time.perf_counter()
    tok = lm.tokenizer
    templated = bool(getattr(tok, "chat_template", None))
    thinks = thinking and templated and has_thinking_mode(tok)
    ids, prompt_length = rebuild_context(tok, item, answer_prefix, thinking=thinks)
    target, contrast = one_token(tok, case.target_text), one_token(tok, case.contrast_text)
    notes = [] if templated else ["no chat template: plain prompt text"]
    notes += ["thinking: the reference ran with thinking on; this model's template has no thinking mode"] \
        if thinking and templated and not thinks else []
    limit = context_length(lm.model)
    specials = special_ids(tok)
    special = [t in specials for t in ids]
    row = {"case_id": case.case_id, "model_fingerprint": fingerprint, "model": model_name, "item_id": case.item_id,
           "benchmark": case.benchmark, "reference": False, "token_ids": ids, "prompt_length": prompt_length,
           "position": len(ids), "target_text": case.target_text, "contrast_text": case.contrast_text,
           "step": None, "split": None, "notes": notes, "tokens": decode_tokens(tok, ids), "special_mask": special}
    unmapped = None
    if limit is not None and len(ids) > limit:  # positions past the window, which the model never saw
        unmapped = f"context of {len(ids)} tokens is longer than this model's {limit} positions"
    elif target is None or contrast is None or target == contrast:
        which = [n for n, t in (("target", target), ("contrast", contrast)) if t is None] or ["target = contrast"]
        unmapped = f"not one token here: {', '.join(which)}"
    elif answer_prefix and (apart := [n for n, t, x in (("target", target, case.target_text),
                                                        ("contrast", contrast, case.contrast_text))
                                      if joins_apart(tok, answer_prefix, ids[prompt_length:], t, x)]):
        unmapped = (f"the answer so far and the {' and the '.join(apart)} tokenize otherwise when joined here: "
                    "this model would not reach that token from this context")
    if unmapped:
        notes.append(unmapped)
        return row | {"mapped": False, "target_id": None, "contrast_id": None, "delta_logit": None,
                      "input_relevance": None, "segment_relevance": {}, "flip_curve": None, "flip_k": None,
                      "flip_tops": None, "flip_top_texts": None, "seconds": round(time.perf_counter() - t0, 3)}
    return row | scored_fields(lm, ids, special, prompt_length, target, contrast, item, case.masking) | {
        "seconds": round(time.perf_counter() - t0, 3)}


def scored_fields(lm: Any, ids: list[int], special: list[bool], prompt_length: int, target: int, contrast: int,
                  item: Any, masking: Any) -> dict[str, Any]:
    """The measured fields of a mapped comparison row, for another model (:func:`rescore`) and for a checkpoint
    (``training.compare``) alike: Δℓ from a plain forward pass, AttnLRP input relevance for Δℓ, its segment sums
    (the benchmark's segmenter) and k* by the case's masking spec, with the tokens masked on the way."""
    from failtrace.analysis.masking import flip_search, never_masked
    from failtrace.analysis.segments import segment_labels, segment_relevance
    from failtrace.attribution.engine import relevance_pass
    from failtrace.attribution.inputs import decode_tokens
    from failtrace.cases.build import logit_diff_fn, plain_delta

    delta = plain_delta(lm.model, ids, target, contrast)
    hidden = relevance_pass(lm.model, ids, logit_diff_fn(target, contrast), method="attnlrp").relevance()
    rel = hidden[0].detach().cpu().numpy().astype(np.float64)
    labels = segment_labels(lm.tokenizer, ids, special, prompt_length, item)
    curve, k_star, tops = flip_search(lm.model, ids, rel, never_masked(special, labels, masking), target, contrast,
                                      masking)
    return {"mapped": True, "target_id": target, "contrast_id": contrast, "delta_logit": delta,
            "input_relevance": [float(x) for x in rel],
            "segment_relevance": {k: float(v) for k, v in segment_relevance(rel, labels).items()},
            "flip_curve": [float(x) for x in curve], "flip_k": k_star,
            "flip_tops": list(tops), "flip_top_texts": decode_tokens(lm.tokenizer, tops)}


def _default_loader(device: str) -> Callable[[str], Any]:
    from failtrace.models.loading import load_model

    return lambda name: load_model(name, device=device, progress=True)


def _reference_cases(store: ResultsStore, lm: Any, name: str, benchmark: str | None) -> list[Case]:
    from failtrace.models.fingerprint import model_fingerprint
    from failtrace.store.cases import load_cases

    cases = load_cases(store, benchmark=benchmark, model_fingerprint=model_fingerprint(lm))
    if not cases:
        raise FailtraceError(f"no cases of model {name!r} (by its content fingerprint) in the store; run "
                             f"`failtrace analyse` on its clean pairs first (--models re-scores the first model's "
                             f"cases: list first a model that has cases)")
    return cases


def _check_reference_before_install(store: ResultsStore, name: str) -> None:
    """Fail before a download when the reference model cannot have cases here: the store has none at all, or it is a
    registry model not installed yet that no stored case names (its cases are found by the installed file's
    fingerprint, and analysing it would have installed it)."""
    from failtrace.models.install import install_status
    from failtrace.models.registry import get_spec, is_registry_name
    from failtrace.store.cases import has_case_tables

    names = [r[0] for r in store.con.execute("SELECT DISTINCT model FROM cases ORDER BY 1").fetchall()] \
        if has_case_tables(store) else []
    if not names:
        raise FailtraceError("no analysed cases in the store to compare; run `failtrace analyse` first")
    if is_registry_name(name) and install_status(get_spec(name)) == "missing" \
            and name.lower() not in {n.lower() for n in names}:
        raise FailtraceError(f"no cases of model {name!r} in the store (its cases are of {', '.join(names)}); "
                             "nothing was installed: list the analysed model first in --models")


def _collected_thinking(store: ResultsStore, run_id: str) -> bool:
    """Whether the collection run a case came from rendered its prompts with thinking on."""
    run = store.get_run(run_id)
    return bool(run and (run.settings or {}).get("thinking"))


def _model_key(name: str) -> str:
    """What makes two --models entries the same model: the resolved path of a file or folder (``m`` and ``./m``),
    else the name without case (registry names and hub ids are case-insensitive)."""
    path = Path(name).expanduser()
    return str(path.resolve()) if path.exists() else name.lower()


def compare(store: ResultsStore, model_names: Sequence[str], *, benchmark: str | None = None,
            limit: int | None = None, models: Mapping[str, Any] | None = None, device: str = "cpu",
            progress: bool = True) -> CompareSummary:
    """Re-score the first model's cases on every other model; resumable (stored keys are skipped)."""
    from failtrace.models.fingerprint import model_fingerprint

    if len(model_names) < 2:
        raise FailtraceError("--models needs at least two models: the one whose cases are compared, then others")
    keys = [_model_key(n) for n in model_names]
    if len(set(keys)) < len(keys):
        twice = next(n for n, k in zip(model_names, keys) if keys.count(k) > 1)
        raise FailtraceError(f"--models names {twice!r} twice; a model compared with itself says nothing")
    if not models:  # every name checked before the first model is used: a bad later one leaves the store as it was
        from failtrace.models.checks import check_model_name

        for name in model_names:
            check_model_name(name)
        _check_reference_before_install(store, model_names[0])
    load = (lambda n: models[n]) if models else _default_loader(device)
    t0 = time.perf_counter()
    summary = CompareSummary()
    ref = load(model_names[0])
    cases = _reference_cases(store, ref, model_names[0], benchmark)[: limit or None]
    items = {c.case_id: store.get_item(c.benchmark, c.item_id) for c in cases}
    prefixes = {c.case_id: ref.tokenizer.decode(c.token_ids[c.prompt_length:], skip_special_tokens=False,
                                                clean_up_tokenization_spaces=False) for c in cases}
    thinking = {rid: _collected_thinking(store, rid) for rid in {c.run_id for c in cases}}  # per collection run
    summary.cases, summary.case_ids = len(cases), [c.case_id for c in cases]
    summary.fingerprints[model_names[0]] = cases[0].model_fingerprint  # the reference's (cases are found by it)
    done = done_comparisons(store, checkpoint=False)
    ref_rows = [reference_row(c, model_names[0]) for c in cases if (c.case_id, c.model_fingerprint) not in done]
    summary.written[model_names[0]] = 0
    del ref
    for name in model_names[1:]:
        lm = load(name)
        fp = model_fingerprint(lm)
        same = next((n for n, f in summary.fingerprints.items() if f == fp), None)
        if same is not None:  # its rows would share the other's keys (case, fingerprint) and never be written
            raise FailtraceError(f"--models: {name!r} computes the same as {same!r} (the same weights, tokenizer and "
                                 f"dtype: content fingerprint {fp[:12]}); a model compared with itself says nothing"
                                 + ("; the rows of the models before it are kept" if len(summary.fingerprints) > 1
                                    else ""))
        if ref_rows:  # written once another model loaded: a model that cannot load leaves the store unchanged
            summary.written[model_names[0]] = sum(write_comparison(store, row) for row in ref_rows)
            ref_rows = []
        summary.fingerprints[name] = fp
        todo = [c for c in cases if (c.case_id, fp) not in done]
        summary.skipped += len(cases) - len(todo)
        summary.written[name], summary.unmapped[name] = 0, 0
        for case in tracked(todo, f"compare on {name}", progress):
            row = rescore(lm, case, items[case.case_id], prefixes[case.case_id], name, fp,
                          thinking=thinking[case.run_id])
            summary.written[name] += write_comparison(store, row)
            summary.unmapped[name] += not row["mapped"]
        del lm
        gc.collect()
    summary.seconds = time.perf_counter() - t0
    return summary
