"""The explorer's case page for a contrast found by ``--sibling`` (Debian's Chromium through Playwright).

A toy store whose checker passes only the rollout that forces a token the *sibling* ranks high and the model itself
ranks below its top 10, so the pair search can only find it through the sibling; then ``analyse``. On that case the
alternatives note counts the model's 10 highest-logit tokens and says the contrast is listed below them, the
contrast's row carries the model's own rank (recomputed here from a plain forward pass), and "contrast from" names
the sibling's top-k with the sibling's rank (recomputed from the sibling's logits). The branch the other browser
tests never reach: their contrasts all come from the model's own top-k.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from test_serve_browser import _chromium, _start  # noqa: E402

from failtrace.cases.alternatives import ALT_K  # noqa: E402
from failtrace.cases.analyse import analyse  # noqa: E402
from failtrace.failures.collect import collect  # noqa: E402
from failtrace.failures.generation import decode_completion, eos_token_ids, greedy_generate  # noqa: E402
from failtrace_testkit.reference_decoding import naive_greedy  # noqa: E402
from failtrace.failures.pairs import PairSettings, find_pairs  # noqa: E402
from failtrace.models.chat import apply_chat_template  # noqa: E402
from failtrace.models.loading import load_model  # noqa: E402
from failtrace.store import open_store  # noqa: E402
from failtrace.store.cases import load_cases  # noqa: E402
from failtrace_testkit.toy import ToyBenchmark, one_thread, save_toy_model, toy_items  # noqa: E402

BUDGET = 16


def _logits(lm: Any, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return lm.model(input_ids=torch.tensor([ids]), use_cache=False).logits[0, -1]


def _sibling_needles(own: Any, sib: Any, items: list[Any]) -> None:
    """Each item's needle: the model's greedy rollout after forcing, at the first answer token, the sibling's best
    token that the model ranks below its top ALT_K (so only the sibling's top-k can recover the item)."""
    eos = eos_token_ids(own.model, own.tokenizer)
    for it in items:
        prompt = apply_chat_template(own.tokenizer, it.prompt)
        first = greedy_generate(own.model, [prompt], BUDGET, eos)[0].token_ids[0]
        mine, theirs = _logits(own, prompt), _logits(sib, prompt)
        picks = [t for t in torch.topk(theirs, 3).indices.tolist()
                 if t != first and int((mine > mine[t]).sum()) > ALT_K]
        assert picks, f"{it.id}: the sibling's top 3 all sit in the model's top {ALT_K}; pick other toy seeds"
        seq = naive_greedy(own.model, prompt, BUDGET, eos, forced=picks[0])
        it.reference["needle"] = decode_completion(own.tokenizer, seq, eos)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("browser-sibling")
    with one_thread():
        own = load_model(str(save_toy_model(root / "own", seed=0)), progress=False)
        sib = load_model(str(save_toy_model(root / "sibling", seed=1)), progress=False)
        items = toy_items(4)[1:]  # q000's forced rollout runs to the budget (unverifiable): the others recover
        _sibling_needles(own, sib, items)
        bench = ToyBenchmark(mode="prefix", max_new_tokens=BUDGET)
        store = root / "runs.duckdb"
        with open_store(store) as st:
            collect(st, bench, items, own, progress=False)
            find_pairs(st, PairSettings(top_k=3, min_delta=0.0, max_positions=8), helper=sib,
                       models={own.name: own}, benchmarks={"toy": bench}, progress=False)
            analyse(st, progress=False)
            pairs = {p["item_id"]: p for p in st.pairs()}
            cases = load_cases(st)
    srv, thread, base = _start(store, review=False)
    from playwright.sync_api import sync_playwright

    errors: list[str] = []
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=_chromium(), args=["--no-sandbox"], headless=True)
            page = browser.new_context(viewport={"width": 1360, "height": 900}).new_page()
            page.on("pageerror", lambda e: errors.append(str(e)))
            try:
                yield {"own": own, "sib": sib, "pairs": pairs, "cases": cases, "base": base, "page": page,
                       "errors": errors}
            finally:
                browser.close()
    finally:
        srv.should_exit = True
        thread.join(10)


def test_every_item_is_recovered_only_through_the_sibling(env: dict[str, Any]) -> None:
    assert len(env["cases"]) == 3
    assert all(p["status"] == "clean" and p["contrast_source"] == "helper" for p in env["pairs"].values())


def test_case_page_says_the_contrast_is_the_siblings_and_below_the_top(env: dict[str, Any]) -> None:
    own, sib, page = env["own"], env["sib"], env["page"]
    for case in env["cases"]:
        pair = env["pairs"][case.item_id]
        ctx = case.token_ids  # the failure point's context: the model's logits there decide the ranks
        mine, theirs = _logits(own, ctx), _logits(sib, ctx)
        own_rank = int((mine > mine[case.contrast_id]).sum())
        order = [t for t in torch.argsort(theirs, descending=True).tolist() if t != case.target_id]
        sib_rank = order.index(case.contrast_id) + 1  # 1: the sibling's best token after the wrong one
        assert own_rank > ALT_K and (pair["contrast_rank"], pair["contrast_model_rank"]) == (sib_rank, own_rank)

        page.goto(env["base"] + f"#/case/{case.case_id}")
        page.wait_for_selector("body[data-ready=case]", timeout=20000)
        rows = page.locator("#alternatives tr[data-token]")
        ranks = [int(rows.nth(i).locator("td").first.inner_text()) for i in range(rows.count())]
        contrast = [ranks[i] for i in range(rows.count()) if rows.nth(i).locator(".pill.ctr").count()]
        assert ranks == list(range(ALT_K)) + [own_rank] and contrast == [own_rank]
        note = page.locator("#alternatives p.note").inner_text()
        assert f"the {ALT_K} highest-logit tokens" in note and "and the contrast below them" in note
        gap = page.locator("#alternatives tr.gap")  # one marked gap, right before the contrast's row
        assert gap.count() == 1 and gap.inner_text().split() == ["⋮", str(own_rank - ALT_K), "tokens", "not", "listed"]
        lines = [ln for ln in page.locator("body").inner_text().splitlines() if "contrast from" in ln]
        found = re.fullmatch(r"contrast from\s*the sibling model's top-k, rank (\d+) \(1: its best token after the "
                             r"wrong one\)", lines[0]) if len(lines) == 1 else None
        assert found and int(found.group(1)) == sib_rank, lines
    assert env["errors"] == []
