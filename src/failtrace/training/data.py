"""Training examples from a store's clean cases, in the explained model's own tokens, and the held-out split.

One :class:`Example` per case whose pair has a verified recovery (the cases ``export-dpo`` writes):

* ``prompt_ids``: the case's prompt (the item's chat prompt through the model's template);
* ``rejected_ids``: the failed completion exactly as the model generated it (answer prefix + target + the rest);
* ``chosen_ids``: answer prefix + contrast (the model's own ids) + the rest of the recovered completion, which is
  stored as text: the text after ``decode(prefix + contrast)`` is encoded, and the completion's end-of-turn token is
  appended (the rollout that passed the checker ended there);
* ``chosen_weights`` / ``rejected_weights``: one weight per completion token, from
  :func:`failtrace.cases.preferences.response_weights` (export-dpo's weights): the normalised positive attribution on
  the answer-prefix tokens, 1 on the decision token (contrast / target), ``tail_weight`` after it.

Token ids are built here rather than by trl's chat-template tokenisation because the weights refer to these exact
tokens (a re-tokenised completion need not split the same way the model generated it).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from failtrace.errors import FailtraceError
from failtrace.store.store import ResultsStore


@dataclass
class Example:
    """One training example (see the module docstring)."""

    case_id: str
    item_id: str
    benchmark: str
    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    chosen_weights: list[float]
    rejected_weights: list[float]
    decision_index: int  # index of the decision token (contrast / target) inside chosen_ids and rejected_ids
    notes: list[str] = field(default_factory=list)
    pair_run_id: str = ""  # with item_id, the pair: a case analysed again from it is the same example


def split_cases(case_ids: Sequence[str], held_out: float, seed: int,
                items: Sequence[str] | None = None) -> tuple[list[str], list[str]]:
    """(trained, held-out) case ids: a fixed, seeded share of the items held out, each item's cases on one side.

    ``items[i]`` names case i's item (default: each case is its own). Items are ordered by the smallest
    SHA-256(seed:case_id) among their cases and the first round(held_out * items) are held out, with all their cases
    (at least one item stays trained). With one case per item that is the order of the case ids themselves. Why by
    item: a store searched twice (two pair runs) has two cases of one item, and a split of case ids trained on an
    item while holding it out. The split depends only on the case ids, their items, the share and the seed, never on
    the row order.
    """
    if not 0.0 <= held_out < 1.0:
        raise FailtraceError(f"--held-out must be in [0, 1), got {held_out}")
    items = list(case_ids) if items is None else list(items)
    if len(items) != len(case_ids):
        raise ValueError(f"split_cases: {len(items)} item names for {len(case_ids)} cases")
    first: dict[str, str] = {}
    for case, item in zip(case_ids, items):
        h = hashlib.sha256(f"{seed}:{case}".encode()).hexdigest()
        first[item] = min(h, first.get(item, h))
    ranked = sorted(first, key=first.__getitem__)
    n_held = min(int(math.floor(held_out * len(ranked) + 0.5)), max(len(ranked) - 1, 0))
    held = set(ranked[:n_held])
    return ([c for c, i in zip(case_ids, items) if i not in held],
            [c for c, i in zip(case_ids, items) if i in held])


def chosen_ids(tokenizer: Any, prefix: list[int], contrast: int, recovered: str, eos: int) -> tuple[list[int], str]:
    """prefix + contrast + the encoded rest of the recovered completion + ``eos``; and a note when the text did not
    start with the decoded prefix + contrast (then the whole text is encoded after prefix + contrast: never the case
    for a recovery the pair search wrote, which decodes exactly those ids)."""
    head = str(tokenizer.decode(prefix + [contrast], skip_special_tokens=True, clean_up_tokenization_spaces=False))
    note = ""
    if recovered.startswith(head):
        rest = recovered[len(head):]
    else:
        rest, note = recovered, "recovered completion does not start with decode(prefix + contrast)"
    tail = [int(t) for t in tokenizer.encode(rest, add_special_tokens=False)] if rest else []
    return [*prefix, int(contrast), *tail, int(eos)], note


def _weights(response_weights: list[float], n: int, tail_weight: float) -> list[float]:
    """``response_weights`` (prefix + decision) then ``tail_weight`` for the remaining ``n - len`` tokens."""
    head = [float(w) for w in response_weights[:n]]
    return head + [float(tail_weight)] * (n - len(head))


def build_example(tokenizer: Any, record: dict[str, Any], eos: frozenset[int], tail_weight: float) -> Example:
    """An :class:`Example` from one export-dpo record (:func:`failtrace.cases.preferences.preference_record`)."""
    prefix = [int(t) for t in record["prefix_ids"]]
    rejected = [int(t) for t in record["rejected_ids"]]
    end = rejected[-1] if rejected and rejected[-1] in eos else int(tokenizer.eos_token_id)
    chosen, note = chosen_ids(tokenizer, prefix, int(record["chosen_decision_id"]),
                              record["chosen"][0]["content"], end)
    d = len(prefix)
    if rejected[: d + 1] != [*prefix, int(record["rejected_decision_id"])]:
        raise FailtraceError(f"case {record['case_id']}: the stored completion does not start with the case's "
                             f"answer prefix and target; the store is inconsistent")
    return Example(case_id=record["case_id"], item_id=record["item_id"], benchmark=record["benchmark"],
                   prompt_ids=[int(t) for t in record["prompt_ids"]], chosen_ids=chosen, rejected_ids=rejected,
                   chosen_weights=_weights(record["response_weights"], len(chosen), tail_weight),
                   rejected_weights=_weights(record["response_weights"], len(rejected), tail_weight),
                   decision_index=d, notes=[note] if note else [], pair_run_id=str(record.get("pair_run_id") or ""))


def load_examples(store: ResultsStore, tokenizer: Any, eos: frozenset[int], model_fingerprint: str,
                  benchmark: str | None = None, tail_weight: float = 0.0,
                  model_name: str | None = None) -> tuple[list[Example], int]:
    """Examples of every clean case of the model with ``model_fingerprint`` that has a verified recovery and whose
    pair no reviewer rejected (:func:`failtrace.cases.preferences.training_cases`), and how many were rejected."""
    from failtrace.cases.preferences import preference_records, training_cases
    from failtrace.store.cases import load_cases

    cases = load_cases(store, benchmark=benchmark, model_fingerprint=model_fingerprint)
    if not cases:
        have = [r[0] for r in store.con.execute("SELECT DISTINCT model FROM cases WHERE ? IS NULL OR benchmark = ? "
                                                "ORDER BY 1", [benchmark, benchmark]).fetchall()]
        which = f"model {model_name!r}" if model_name else "this model"
        where = f"{store.path}" + (f" for benchmark {benchmark}" if benchmark else "")
        if model_name in have:  # the same name, other weights
            raise FailtraceError(f"no cases of {which} by its content fingerprint in {where}: the cases under that "
                                 f"name were built from other weights (another dtype, revision or transformers "
                                 f"version); load it as it was then, or run `failtrace analyse` with it first")
        raise FailtraceError(f"no cases of {which} (by its content fingerprint) in {where}; its cases are of "
                             f"{', '.join(have) or 'no model'}: pass one of those with --model, or run "
                             f"`failtrace analyse` with this model first")
    kept, rejected = training_cases(store, cases, "of this model ", "nothing to train on")
    out = [build_example(tokenizer, rec, eos, tail_weight) for rec in preference_records(store, kept, tail_weight)]
    if not out:
        raise FailtraceError(f"none of the {len(kept)} cases of this model in {store.path} has a pair with a "
                             f"recovered completion; nothing to train on")
    return out, rejected
