"""The pair search for one failure: the first completion position where one of the top-k alternatives recovers.

For one failed item with prompt ids ``P`` (n tokens) and completion ids ``C`` (m tokens, exactly as generated, EOS
included when the model stopped), with rollout budget ``R`` (default: the collection's ``max_new_tokens``; at most
the model's context window minus n, as collection stops generating where the window ends):

1. The stored completion is checked again; if the checker no longer says ``fail`` the case is ``unverifiable``.
2. If ``C`` hit the length limit and ``R`` exceeds that limit, ``C`` is first continued greedily up to ``R`` tokens:
   if it then stops and passes, the failure was an artefact of the budget (``unbounded``, said so); if it stops and
   still fails, the failure is real and the search below treats it as bounded, over ``C``'s own positions (a target
   after them would not be in the stored answer; the reason says how to search them).
3. One forward pass over ``P + C[:W-1]`` gives the KV cache and the next-token logits at every walked position,
   ``W = min(m, max_positions)``. Nothing before a position is ever recomputed (the cache is shared by all).
4. In-order semantics: position p = 0, 1, ..., W-1; at each, the model's top-k alternatives to ``C[p]`` (rank
   order), then (with a stronger sibling) the sibling's top-k not tried yet. Each alternative ``a`` is forced after
   ``P + C[:p]`` and decoding continues greedily with the model, the completion ``C[:p] + [a] + ...`` having at
   most ``R`` tokens. The *first* alternative in this order whose rollout passes is the contrast; ``C[p]`` is the
   target. ``Δℓ = logit(target) − logit(contrast)`` at p.

Cost cuts that never change which pair is found (tested against the exhaustive in-order search):

* positions are taken in blocks of 1, 2, 4, ... up to ``position_batch`` positions, and all rollouts of a block are
  decoded as one batch (:func:`~failtrace.failures.generation.rollouts_at`); they are then *checked* in the order
  above, so rollouts after the first pass are only wasted work, never a different answer; a sibling's rows follow
  in a second batch, only at the block's positions before its own first recovering one;
* with a benchmark prefix rule (:mod:`failtrace.failures.prefix_rules`) a rollout is ended as soon as its prefix
  decides ``fail`` (checked every ``stop_every`` tokens), or as soon as the checker reads nothing after it (then it
  is checked at once); a position whose own prefix ``C[:p]`` already decides is not rolled out at all (neither is
  any later one: the rules are monotone in the prefix, and a fixed verdict is the stored completion's ``fail``);
* positions may be rolled out in another order (:mod:`failtrace.failures.order`, a judge's hint first); once a
  position q recovers, only positions < q are still rolled out, and the smallest recovering one is reported;
* rollouts that repeat themselves or rejoin the failing completion are drafted from their own text or from the
  completion after their position, and verified by the model, several tokens per pass
  (:mod:`failtrace.failures.decode`): the same greedy tokens, fewer passes.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from failtrace.benchmarks.base import Benchmark, Item
from failtrace.failures.collect import safe_check
from failtrace.failures.generation import (
    FINISH_EOS,
    FINISH_WINDOW,
    decode_completion,
    eos_token_ids,
    finish_reason,
    greedy_generate,
    pad_token_id,
    prefix_forward,
    rollouts_at,
)
from failtrace.failures.order import rank_positions
from failtrace.failures.pair_types import PairResult, PairSettings, check_models, check_rollout_window, visible
from failtrace.failures.prefix_rules import FAIL, FINAL, PrefixJudge, fixed_by_text, prefix_text, verdict_key
from failtrace.failures.search_state import Found, Row, SearchState, fill_pair, walked_scope
from failtrace.models.limits import context_length
from failtrace.store.records import FINISH_CUT, RECOVERY_CUT


class PairFinder:
    """Finds target/contrast pairs for the failures of one model (see the module docstring for the algorithm).

    ``helper`` is the stronger sibling (same tokenizer required): its top-k is tried where the model's is not
    enough; rollouts are still continued by the model being explained. ``judge`` (a
    :class:`~failtrace.failures.judge.PositionJudge`) hints a position to roll out first (speed only).
    """

    def __init__(self, loaded: Any, settings: PairSettings | None = None, helper: Any | None = None,
                 judge: Any | None = None) -> None:
        self.loaded = loaded
        self.judge = judge
        self.settings = settings or PairSettings()
        self.settings.validate()
        self.helper = helper
        self.on_block: Any = None  # called with the result so far after each block of rollouts (progress only)
        check_models(self.settings, loaded, helper)  # before any pair run is recorded
        self.eos = eos_token_ids(loaded.model, loaded.tokenizer)
        self.window = context_length(loaded.model)
        check_rollout_window(self.settings, loaded.name, self.window)

    def _hint(self, item: Item, comp: list[int], live: list[int], res: PairResult, search: SearchState) -> int | None:
        """The judge's hinted completion offset (recorded in ``res``), or None without a judge or a usable hint."""
        if self.judge is None:
            return None
        t = time.perf_counter()
        hint = self.judge.hint(item, self._text(comp), comp, self.loaded.tokenizer, self.eos)
        res.seconds_judge = time.perf_counter() - t
        res.judge_position = hint.position
        note = hint.describe() + ("" if hint.position is None or hint.position in live else " (not a live position)")
        search.notes.append(f"; judge hint: {note}")
        return hint.position

    def _token_text(self, token_id: int) -> str:
        return str(self.loaded.tokenizer.decode([int(token_id)], clean_up_tokenization_spaces=False))

    def _text(self, ids: Sequence[int]) -> str:
        return decode_completion(self.loaded.tokenizer, ids, self.eos)

    def _check(self, benchmark: Benchmark, item: Item, text: str, search: SearchState) -> str:
        """The checker's status for ``text``, run once per distinct verdict key of this failure (the benchmark's
        ``verdict_key``, else the text itself): on HumanEval many rollouts end in the same code, one sandbox run."""
        t = time.perf_counter()
        key = verdict_key(benchmark, item, text)
        if key is not None and key in search.verdicts:
            search.res.checks_reused += 1
            search.res.seconds_check += time.perf_counter() - t
            return search.verdicts[key]
        status = safe_check(benchmark, item, text).status
        if key is not None:
            search.verdicts[key] = status
        search.res.seconds_check += time.perf_counter() - t
        search.res.checks += 1
        return status

    def _block_rows(self, block: Sequence[int], comp: list[int], model_top: list[list[int]],
                    helper_top: list[list[int]] | None, vocab: int) -> list[Row]:
        """The rollouts of a block of positions, in the order they are checked: the model's own top-k at each
        position, or (given ``helper_top``) only the sibling's top-k not among the model's."""
        k = self.settings.top_k
        rows: list[Row] = []
        for p in block:
            cands = [c for c in model_top[p] if c != comp[p]][:k]
            if helper_top is None:
                rows.extend(Row(p, c, "model", r) for r, c in enumerate(cands, start=1))
            else:
                ranked = [c for c in helper_top[p] if c != comp[p] and c < vocab][:k]
                rows.extend(Row(p, c, "helper", r) for r, c in enumerate(ranked, start=1) if c not in cands)
        return rows

    def _run_block(self, benchmark: Benchmark, item: Item, rows: list[Row], comp: list[int], prompt: list[int],
                   kv: Any, budget: int, judge: PrefixJudge,
                   search: SearchState) -> tuple[Found | None, dict[int, int]]:
        """Decode a block's rollouts as one batch and check them in order; the first pass is the answer.

        Rows are checked in order *as they end*: row i as soon as rows 0..i have all ended and none passed. So the
        checks are exactly those of decoding everything and then checking in order, but once the answer is known
        (with ``halt_at_answer``) the rows after it, which could only be wasted work, stop decoding at once.
        Also returns, per position, how many of its rollouts checked before that pass were unverifiable.
        """
        stop, kinds = None, {}
        if judge.active:
            def stop(i: int, toks: list[int]) -> bool:
                kind = judge.kind(comp[:rows[i].p] + toks)
                if kind is not None:
                    kinds[i] = kind
                return kind is not None
        ended: dict[int, tuple[list[int], bool]] = {}
        unver: dict[int, int] = {}
        state = {"next": 0, "answer": None}

        def on_end(i: int, toks: list[int], was_stopped: bool) -> bool:
            ended[i] = (list(toks), was_stopped)
            while state["answer"] is None and state["next"] in ended:
                j = state["next"]
                status = self._row_status(benchmark, item, rows[j], comp, *ended[j], kinds.get(j), search)
                if status == "pass":
                    state["answer"] = j
                elif status == "unverifiable":
                    unver[rows[j].p] = unver.get(rows[j].p, 0) + 1
                elif not ended[j][1] and self._open(benchmark, item, rows[j], comp, ended[j][0], budget):
                    search.cut_open[rows[j].p] = search.cut_open.get(rows[j].p, 0) + 1
                state["next"] += 1
            return state["answer"] is not None and self.settings.halt_at_answer

        t, n, checking = time.perf_counter(), len(prompt), search.res.seconds_check
        seqs, stopped = rollouts_at(self.loaded.model, kv, [n + r.p for r in rows], [r.token for r in rows],
                                    [budget - r.p for r in rows], self.eos, self.settings.rollout_batch_size,
                                    stop, self.settings.stop_every, on_end, [prompt + comp[:r.p] for r in rows],
                                    self.settings.draft_tokens,
                                    [comp[r.p + 1:] for r in rows] if self.settings.draft_from_completion else None)
        search.res.seconds_rollouts += time.perf_counter() - t - (search.res.seconds_check - checking)
        search.res.rollouts += sum(1 for q in seqs if q)
        search.res.tokens_decoded += sum(len(q) for q in seqs)
        search.res.rollouts_stopped += sum(k == FAIL for k in kinds.values())
        search.res.rollouts_final += sum(k == FINAL for k in kinds.values())
        if self.on_block is not None:
            self.on_block(search.res)
        if state["answer"] is None:
            return None, unver
        j = state["answer"]
        row, (seq, was_stopped) = rows[j], ended[j]
        if was_stopped:  # the verdict was fixed: decode the rest once, so the recorded completion is whole
            rest = self._more(prompt + comp[:row.p] + seq, budget - row.p - len(seq))
            search.res.tokens_decoded += len(rest)
            seq = seq + rest
        cut = len(seq) >= budget - row.p and not (seq and seq[-1] in self.eos)
        return Found(row, self._text(comp[:row.p] + seq), cut), unver

    def _row_status(self, benchmark: Benchmark, item: Item, row: Row, comp: list[int], seq: list[int],
                    was_stopped: bool, kind: str | None, search: SearchState) -> str:
        """The checker's verdict on one ended rollout; a rollout stopped by a fail rule is ``fail`` unchecked."""
        if was_stopped and kind == FAIL:  # the rule proved every continuation fails: the checker would say fail
            return "fail"
        ids = comp[:row.p] + seq
        text = prefix_text(self.loaded.tokenizer, ids) if was_stopped else self._text(ids)
        return self._check(benchmark, item, text, search)

    def _open(self, benchmark: Benchmark, item: Item, row: Row, comp: list[int], seq: list[int], budget: int) -> bool:
        """A failing rollout cut at the budget whose text does not fix its verdict (a cut collection: unbounded)."""
        cut = len(seq) >= budget - row.p and not (seq and seq[-1] in self.eos)
        return cut and fixed_by_text(benchmark, item, self.loaded.tokenizer, comp[:row.p] + seq) is None

    def _more(self, ids: list[int], budget: int) -> list[int]:
        """Greedy continuation of ``ids`` for at most ``budget`` tokens."""
        if budget <= 0:
            return []
        return greedy_generate(self.loaded.model, [ids], budget, self.eos,
                               pad_token_id(self.loaded.tokenizer, self.eos), self.settings.draft_tokens)[0].token_ids

    def _walk(self, benchmark: Benchmark, item: Item, comp: list[int], prompt: list[int], kv: Any, queue: list[int],
              model_top: list[list[int]], helper_top: list[list[int]] | None, vocab: int, budget: int,
              judge: PrefixJudge, search: SearchState) -> Found | None:
        """Positions in ``queue`` order, in blocks of 1, 2, 4, ... (at most ``position_batch``); once a position q
        recovers, only positions < q remain (in full blocks: all of them must be rolled out). The smallest
        recovering position is the answer, as in order."""
        best: Found | None = None
        done: set[int] = set()
        unver: dict[int, int] = {}
        size = 1
        while True:
            todo = [p for p in queue if p not in done and (best is None or p < best.row.p)]
            if not todo:
                break
            block = sorted(todo[:size])  # checked in position order: the block's first pass is its smallest
            rows = self._block_rows(block, comp, model_top, None, vocab)
            found, block_unver = self._run_block(benchmark, item, rows, comp, prompt, kv, budget, judge, search)
            if helper_top is not None:
                # the sibling's rows come after the model's own, so only positions before the block's own answer
                # need them: a second batch there (decoded alongside, they cost ~35 % more on HumanEval+)
                lower = [p for p in block if found is None or p < found.row.p]
                rows = self._block_rows(lower, comp, model_top, helper_top, vocab)
                if rows:
                    theirs, their_unver = self._run_block(benchmark, item, rows, comp, prompt, kv, budget, judge,
                                                          search)
                    found = theirs or found  # a sibling's answer is at a smaller position than the model's
                    for p, c in their_unver.items():
                        block_unver[p] = block_unver.get(p, 0) + c
            done.update(block)
            for p, c in block_unver.items():
                unver[p] = unver.get(p, 0) + c
            if found is not None:
                best = found  # every position still queued is smaller than the previous best
            size = self.settings.position_batch if best is not None else min(2 * size, self.settings.position_batch)
        # unverifiable rollouts count where in-order search would have checked them: before the answer
        search.res.unverifiable_rollouts = sum(c for p, c in unver.items() if best is None or p <= best.row.p)
        search.res.positions_rolled = len(done)
        search.note_cut_open(None if best is None else best.row.p, budget)
        return best

    def find(self, benchmark: Benchmark, item: Item, prompt_ids: Sequence[int], completion_ids: Sequence[int],
             max_new_tokens: int, finish: str | None = None) -> PairResult:
        """Search the failure point of one failed completion; always returns a result with one status."""
        t0 = time.perf_counter()
        prompt = [int(t) for t in prompt_ids]
        comp = [int(t) for t in completion_ids]
        n, m = len(prompt), len(comp)
        finish = finish or finish_reason(comp, self.eos)
        unbounded = finish in FINISH_CUT
        budget = self.settings.rollout_tokens or max_new_tokens
        if self.window is not None:  # prompt + rollout stay inside the window, as collection's generation does
            budget = max(1, min(budget, self.window - n))
        # cut where no budget can continue it: stopped by the window, or a budget that ended exactly at its end
        at_window = unbounded and self.window is not None and n + m >= self.window
        res = PairResult(status="no_target", prompt_tokens=n, completion_tokens=m, hit_length_limit=unbounded)
        search = SearchState(res)
        notes = search.notes

        def done(status: str, reason: str) -> PairResult:
            return search.finish(status, reason, time.perf_counter() - t0)

        t = time.perf_counter()
        verdict = safe_check(benchmark, item, self._text(comp))
        res.seconds_check += time.perf_counter() - t
        res.checks += 1
        stored_key = verdict_key(benchmark, item, self._text(comp))
        if stored_key is not None:  # a rollout that ends in the stored completion's code/answer fails unchecked
            search.verdicts[stored_key] = verdict.status
        if verdict.status != "fail":
            why = "; ".join(verdict.reasons)[:300]
            return done("unverifiable", f"the checker now says {verdict.status!r} for the stored completion, not "
                                        f"'fail'{': ' + why if why else ''}; recoveries against it would mean nothing")
        fixed = fixed_by_text(benchmark, item, self.loaded.tokenizer, comp) if unbounded else None
        if fixed is not None:  # e.g. a closed HumanEval block, an IFEval comma: the cut changes nothing
            unbounded = at_window = False
            cut = "the model's context window" if finish == FINISH_WINDOW else f"the {max_new_tokens}-token limit"
            notes.append(f"; the completion was cut at {cut} but {fixed}: a decided failure")
        if unbounded and budget > max_new_tokens and m < budget:
            longer = comp + self._more(prompt + comp, budget - len(comp))  # continued to the rollout budget
            why_end = finish_reason(longer, self.eos)
            res.continued, res.continued_tokens = "length", len(longer)
            res.tokens_decoded += len(longer) - len(comp)  # the continuation is decoding too (reported per failure)
            if why_end == FINISH_EOS:
                res.continued = status = self._check(benchmark, item, self._text(longer), search)
                if status == "pass":
                    return done("unbounded", f"the completion hit the {max_new_tokens}-token limit and passes when "
                                             f"continued to {len(longer)} tokens (rollout budget {budget}): the "
                                             f"failure is an artefact of the budget")
                if status == "fail":
                    unbounded = False
                    notes.append(f"; the completion hit the {max_new_tokens}-token limit but stops at "
                                 f"{len(longer)} tokens within the rollout budget {budget} and still fails")
        if unbounded and not self.settings.try_unbounded:
            if at_window or (res.continued == "length" and self.window is not None
                             and n + res.continued_tokens >= self.window):
                reach = m if at_window else res.continued_tokens
                return done("unbounded", f"the completion reached the model's context window ({n + reach} tokens "
                                         f"with the prompt){' when continued' if not at_window else ''}; no budget "
                                         "can continue it, so it could never be clean; not searched (--try-unbounded "
                                         "searches it)")
            if res.continued == "unverifiable":
                return done("unbounded", f"the completion hit the {max_new_tokens}-token limit and, continued to "
                                         f"{res.continued_tokens} tokens (rollout budget {budget}), could not be "
                                         f"checked; not searched")
            if res.continued == "length":
                return done("unbounded", f"the completion hit the {max_new_tokens}-token limit and, continued to the "
                                         f"rollout budget ({budget} tokens), hit that too; not searched (it could not "
                                         f"be clean; a larger --rollout-tokens may decide it)")
            return done("unbounded", f"the completion hit the {max_new_tokens}-token limit; not searched (it could "
                                     f"not be clean; --try-unbounded searches it, --rollout-tokens continues it)")
        return self._search(benchmark, item, prompt, comp, budget, max_new_tokens, unbounded, res, search, done)

    def _search(self, benchmark: Benchmark, item: Item, prompt: list[int], comp: list[int], budget: int,
                max_new_tokens: int, unbounded: bool, res: PairResult, search: SearchState, done: Any) -> PairResult:
        """Steps 3-4 of the module docstring, then the status."""
        import torch

        n, m, k = len(prompt), len(comp), self.settings.top_k
        walk = min(m, self.settings.max_positions)
        if walk == 0:
            return done("unbounded" if unbounded else "no_target", "the completion is empty: no position to walk")
        t = time.perf_counter()
        state = prefix_forward(self.loaded.model, prompt + comp[:walk - 1], n_logits=walk)
        helper_top: list[list[int]] | None = None
        if self.helper is not None:
            hstate = prefix_forward(self.helper.model, prompt + comp[:walk - 1], n_logits=walk, keep_cache=False)
            helper_top = torch.topk(hstate.logits, min(k + 1, hstate.logits.shape[-1]), dim=-1).indices.tolist()
        model_top = torch.topk(state.logits, min(k + 1, state.logits.shape[-1]), dim=-1).indices.tolist()
        vocab = int(state.logits.shape[-1])  # a sibling with a padded embedding may rank ids the model lacks
        res.seconds_prefix = time.perf_counter() - t

        positions = [p for p in range(walk) if budget - p >= 1]
        judge = PrefixJudge(benchmark, item, self.loaded.tokenizer, self.settings.early_stop)
        live, decided = positions, None
        for i, p in enumerate(positions):  # the completion's own prefix may already decide: no rollout can recover
            kind = judge.kind(comp[:p]) if judge.active else None
            if kind is not None:
                live = positions[:i]
                decided = f"already fails: {judge.decided(comp[:p])}" if kind == FAIL else \
                    "already fixes the verdict: the checker reads nothing after it, and the stored completion fails"
                break
        res.positions_decided = len(positions) - len(live)
        queue = rank_positions(live, state.logits, self.settings.order, self._hint(item, comp, live, res, search))
        found = self._walk(benchmark, item, comp, prompt, state.kv, queue, model_top, helper_top, vocab, budget,
                           judge, search)
        res.positions_walked = found.row.p + 1 if found is not None else len(positions)
        if found is not None:
            return self._record(found, state.logits[found.row.p], comp, n, budget, unbounded, res, search, done)
        scope = walked_scope(m, walk, len(live), decided, self.settings.max_positions, res)
        if unbounded:
            return done("unbounded", f"the completion hit the {max_new_tokens}-token limit and no alternative "
                                     f"recovered in {scope}")
        if res.unverifiable_rollouts:
            return done("unverifiable", f"no recovery in {scope}, but {res.unverifiable_rollouts} rollout(s) could not "
                                        f"be verified")
        if self.helper is not None:
            return done("no_contrast", f"no alternative in the top-{k} of {self.loaded.name} or of sibling "
                                       f"{self.helper.name} recovers in {scope}")
        return done("no_target", f"no alternative in the model's top-{k} recovers in {scope}")

    def _record(self, found: Found, row: Any, comp: list[int], n: int, budget: int, unbounded: bool,
                res: PairResult, search: SearchState, done: Any) -> PairResult:
        """Fill the pair fields of a recovery and decide its status."""
        fill_pair(res, found, row, comp[found.row.p], n, self._token_text)
        p, contrast = found.row.p, found.row.token
        where = (f"at completion offset {p} (sequence position {n + p}): target '{visible(res.target_text)}' -> "
                 f"contrast '{visible(res.contrast_text)}' ({found.row.source} rank {found.row.rank}), "
                 f"Δℓ = {res.delta_logit:.3f}")
        if contrast in set(getattr(self.loaded.tokenizer, "all_special_ids", ())) - self.eos:
            where += "; the contrast is a special token: the checked text does not show it (docs/PAIRS.md)"
        if found.cut:  # the same budget the failure was judged at (docs/PAIRS.md): said, not hidden
            where += f"; the recovering rollout reached the {budget}{RECOVERY_CUT}"
        if unbounded:
            return done("unbounded", f"the completion hit the length limit; a recovery was found {where}")
        if res.unverifiable_rollouts:
            return done("unverifiable", f"{res.unverifiable_rollouts} rollout(s) checked before the recovery {where} "
                                        f"could not be verified, so it may not be the first recovering choice")
        if res.delta_logit > self.settings.min_delta:
            return done("clean", f"recovered {where}")
        return done("weak_preference", f"recovered {where}, but Δℓ ≤ --min-delta {self.settings.min_delta}")
