"""``failtrace pairs --sibling`` (alias ``--helper-model``) and ``--rollout-tokens`` from the command line."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from failtrace.cli import main
from failtrace.failures.collect import register_benchmark
from failtrace.store import open_store
from failtrace_testkit.toy import ToyBenchmark, one_thread, save_toy_model, toy_tokenizer


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with one_thread():
        yield


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("toys")
    with one_thread():
        own = save_toy_model(root / "own", seed=0)
        sibling = save_toy_model(root / "sibling", seed=1)
        other = save_toy_model(root / "other", seed=1)
        tok = toy_tokenizer()
        tok.add_tokens(["<extra-token>"])
        tok.save_pretrained(other)
    return own, sibling, other


def _collected(tmp_path: Path, model: Path, name: str, items: int, tokens: int) -> Path:
    """A store with ``items`` failed toy items collected by ``model`` (the needle is never written)."""
    register_benchmark(ToyBenchmark(name=name, mode="contains", max_new_tokens=tokens))
    data = tmp_path / "items.jsonl"
    data.write_text("\n".join(json.dumps({"id": f"a{i}", "prompt": f"Say {chr(97 + i)}", "needle": "\x7f\x7f"})
                              for i in range(items)) + "\n")
    store = tmp_path / "s.duckdb"
    assert main(["collect", "-b", name, "-d", str(data), "-m", str(model), "-s", str(store),
                 "--max-new-tokens", str(tokens), "--no-progress"]) == 0
    return store


def test_sibling_option_alias_and_tokenizer_error(tmp_path: Path, models: tuple[Path, Path, Path],
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    own, sibling, other = models
    store = _collected(tmp_path, own, "toy-sib", 2, 10)
    capsys.readouterr()
    assert main(["pairs", "-s", str(store), "-k", "2", "--max-positions", "2", "--sibling", str(other),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "different tokenizer" in err and "--sibling" in err
    assert "Traceback" not in err
    with open_store(store, read_only=True) as st:
        assert st.runs("pairs") == [] or all(not st.pairs(r.run_id) for r in st.runs("pairs"))
    for flag in ("--sibling", "--helper-model"):
        assert main(["pairs", "-s", str(store), "-k", "2", "--max-positions", "2", flag, str(sibling),
                     "--no-progress"]) == 0
        capsys.readouterr()
    with open_store(store, read_only=True) as st:
        runs = st.runs("pairs")
        assert len(runs) == 1 and runs[0].settings["helper_model"] == str(sibling)  # the same run either way
        assert {r["status"] for r in st.pairs(runs[0].run_id)} <= {"no_contrast", "unbounded", "clean",
                                                                  "weak_preference"}
    assert main(["pairs", "-s", str(store), "--sibling", str(sibling), "--helper-model", str(other)]) == 2
    err = capsys.readouterr().err
    assert err == "error: --sibling and --helper-model (its old name) name different models; give one\n"
    assert main(["pairs", "--help"]) == 0
    assert "--helper-model" not in capsys.readouterr().out  # the old name works, but help shows only --sibling
    assert main(["pairs", "-s", str(store), "--rollout-tokens", "0", "--no-progress"]) == 2
    err = capsys.readouterr().err  # refused by the option parser, before any model load
    assert err.startswith("error: ") and "--rollout-tokens" in err and "at least 1" in err
    # a rollout budget below the collection's: recoveries would be judged on shorter text than the failure
    assert main(["pairs", "-s", str(store), "--rollout-tokens", "9", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --rollout-tokens 9 is below the 10 tokens collection run ") and \
        err.endswith("generated with; give at least 10 (the default)\n")
    with open_store(store, read_only=True) as st:
        assert len(st.runs("pairs")) == 1  # no pair run recorded for it
    assert main(["pairs", "-s", str(store), "--rollout-tokens", "10", "-k", "2", "--max-positions", "2",
                 "--sibling", str(sibling), "--no-progress"]) == 0  # equal to it: the default's own run
    with open_store(store, read_only=True) as st:
        assert len(st.runs("pairs")) == 1


def test_order_and_judge_are_speed_only(tmp_path: Path, models: tuple[Path, Path, Path],
                                        capsys: pytest.CaptureFixture[str]) -> None:
    own, sibling, _ = models
    store = _collected(tmp_path, own, "toy-order", 2, 8)
    capsys.readouterr()
    assert main(["pairs", "-s", str(store), "--order", "sideways", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--order" in err and "margin" in err
    # 8-token completions hit the limit: --try-unbounded so that they are searched (and the judge is asked)
    assert main(["pairs", "-s", str(store), "-k", "2", "--max-positions", "3", "--order", "margin", "--judge",
                 str(sibling), "--try-unbounded", "--no-progress"]) == 0
    assert "2 paired now" in capsys.readouterr().out
    assert main(["pairs", "-s", str(store), "-k", "2", "--max-positions", "3", "--try-unbounded",
                 "--no-progress"]) == 0
    assert "2 already paired, 0 paired now" in capsys.readouterr().out  # the same pair run: order/judge are speed
    with open_store(store, read_only=True) as st:
        (run,) = st.runs("pairs")
        assert run.settings["order"] == "margin" and run.settings["judge_model"] == str(sibling)
        rows = st.pairs(run.run_id)
        assert len(rows) == 2 and all("judge hint: " in r["reason"] for r in rows)
        assert all(r["seconds_judge"] > 0 and r["tokens_decoded"] > 0 for r in rows)


def test_item_selects_failures_and_a_wrong_id_is_one_line(tmp_path: Path, models: tuple[Path, Path, Path],
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    own, _, _ = models
    store = _collected(tmp_path, own, "toy-item", 3, 6)
    capsys.readouterr()
    assert main(["pairs", "-s", str(store), "-k", "2", "--max-positions", "2", "--item", "a2", "--item", "a0",
                 "--no-progress"]) == 0
    assert capsys.readouterr().out.startswith("2 failures, 0 already paired, 2 paired now")
    with open_store(store, read_only=True) as st:
        assert sorted(r["item_id"] for r in st.pairs()) == ["a0", "a2"]
    before = store.read_bytes()
    assert main(["pairs", "-s", str(store), "-k", "2", "--max-positions", "2", "--item", "a7",
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --item 'a7' is not a failed item") and "3 failed: a0, a1, a2" in err
    assert "Traceback" not in err and store.read_bytes() == before  # refused before the store is written
    assert main(["pairs", "-s", str(store), "-k", "2", "--max-positions", "2", "--no-progress"]) == 0
    assert capsys.readouterr().out.startswith("3 failures, 2 already paired, 1 paired now")  # the same pair run
    with open_store(store, read_only=True) as st:
        assert len(st.runs("pairs")) == 1 and sorted(r["item_id"] for r in st.pairs()) == ["a0", "a1", "a2"]


def test_pair_counts_and_progress_name_statuses_as_every_view(tmp_path: Path, models: tuple[Path, Path, Path],
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """The pairs summary said "5 no_target" and its progress lines "(HumanEval/0: no_target)", the stored names;
    status, the report and the explorer say "no target". Both now take the label, in the store's order."""
    from failtrace.cli.pipeline import pair_counts
    from failtrace.store.schema import PAIR_STATUS_TEXT, PAIR_STATUSES

    store = _collected(tmp_path, models[0], "toy-words", 3, 6)
    capsys.readouterr()
    assert main(["pairs", "-s", str(store), "-k", "2", "--max-positions", "2", "--try-unbounded"]) == 0
    out, err = capsys.readouterr()  # stderr is not a terminal here: one progress line per failure
    with open_store(store, read_only=True) as st:
        stored = {r["item_id"]: r["status"] for r in st.pairs()}
    notes = {ln.rsplit("(", 1)[1].split(": ")[0]: ln.rsplit(": ", 1)[1].rstrip(")") for ln in err.splitlines()
             if ln.startswith("pairs toy-words")}
    assert notes == {i: PAIR_STATUS_TEXT[s][0] for i, s in stored.items()} and len(notes) == 3
    assert f"paired now ({pair_counts(dict(Counter(stored.values())))}; " in out

    got = pair_counts({"weak_preference": 1, "no_target": 2, "clean": 3, "unbounded": 0})
    assert got == "3 clean, 2 no target, 1 weak preference"
    assert pair_counts({}) == ""
    assert [s for s in PAIR_STATUSES if PAIR_STATUS_TEXT[s][0] != s] == ["no_target", "no_contrast",
                                                                          "weak_preference"]


def test_pairs_progress_says_how_far_a_long_failure_has_got(tmp_path: Path, models: tuple[Path, Path, Path],
                                                            capsys: pytest.CaptureFixture[str],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A real HumanEval+ failure took 150 s while the bar sat at 0/1: the bar now says the failure's rollouts and
    tokens so far (off a terminal, a line at most every 10 s; every block here). The last such line of a failure
    counts what its stored pair row counts."""
    import re

    from failtrace.progress import Bar

    monkeypatch.setattr(Bar, "STATUS_EVERY_S", 0.0)
    store = _collected(tmp_path, models[0], "toy-words", 3, 6)
    capsys.readouterr()
    assert main(["pairs", "-s", str(store), "-k", "2", "--max-positions", "2", "--try-unbounded"]) == 0
    err = capsys.readouterr().err
    last: dict[str, tuple[int, int]] = {}
    for item, rollouts, tokens in re.findall(r"\((\S+): (\d+) rollouts, (\d+) tokens so far\)$", err, re.M):
        last[item] = (int(rollouts), int(tokens))
    with open_store(store, read_only=True) as st:
        stored = {r["item_id"]: (r["rollouts"], r["tokens_decoded"]) for r in st.pairs()}
    assert last and set(last) <= set(stored)
    for item, (rollouts, tokens) in last.items():
        assert rollouts == stored[item][0] and tokens <= stored[item][1], (item, last[item], stored[item])


def test_no_clean_pair_with_rollouts_cut_open_points_at_the_rollout_budget(
        tmp_path: Path, models: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A real quote-wrapping IFEval fix failed only because the budget cut it before its closing quote; the hint
    pointed at --top-k and --max-positions alone. It now counts such failures and names --rollout-tokens."""
    import failtrace.failures.pairs as P

    store = _collected(tmp_path, models[0], "toy-words", 3, 6)
    capsys.readouterr()
    for cut, says in ((2, "; 2 of them had rollouts cut at the rollout budget with the verdict open, which a larger "
                          "--rollout-tokens may decide (failtrace status"), (0, "may find some (failtrace status")):
        monkeypatch.setattr(P, "find_pairs", lambda *a, cut=cut, **k: P.PairsSummary(
            pair_run_ids=[], failures=3, processed=3, statuses={"no_target": 3}, cut_open=cut))
        assert main(["pairs", "-s", str(store), "--no-progress"]) == 0
        err = capsys.readouterr().err
        assert "next: no clean pair this time; a larger --top-k or --max-positions" in err and says in err, err


def test_the_summary_counts_each_pair_once_here_and_on_ray() -> None:
    """pairs here and pairs --workers N count written pairs with one method; the Ray path had no count of the
    failures whose rollouts the budget cut with the verdict open, so its closing hint never named --rollout-tokens."""
    from failtrace.failures.pairs import PairResult, PairsSummary

    s = PairsSummary()
    for status, cut in (("no_target", 3), ("no_target", 0), ("clean", 2), ("weak_preference", 1)):
        s.add(PairResult(status=status, rollouts=10, tokens_decoded=5, rollouts_cut_open=cut))
    assert (s.processed, s.rollouts, s.tokens_decoded, s.cut_open) == (4, 40, 20, 2)
    assert s.statuses == {"no_target": 2, "clean": 1, "weak_preference": 1}
