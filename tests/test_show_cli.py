"""`failtrace show` against the cases read independently: the list has one row per case of the newest analysis; one
case prints its tokens in masking order as the rule reads by hand (positive relevance, never a special id or the
template's own text, largest first, ties by position), marks the first k*, and prints the stored Δℓ after k; a case
of an older analysis names the one the views show; bad input is one line."""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from serve_store import analysed_toy_store, sha256  # noqa: E402

from failtrace.cli import main  # noqa: E402
from failtrace.report import compare_data as D  # noqa: E402
from failtrace.store import open_store  # noqa: E402
from failtrace.store.cases import load_cases  # noqa: E402
from failtrace.views.common import clipped_text, shown  # noqa: E402


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    info = analysed_toy_store(tmp_path_factory.mktemp("show"))
    with open_store(info["store"], read_only=True) as st:
        info["cases"] = load_cases(st)
    assert len(info["cases"]) >= 3
    return info


def _show(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, *args: str) -> tuple[int, str, str]:
    from failtrace.cli import show as show_cli
    from failtrace.cli.console import console

    monkeypatch.setattr(show_cli, "_console", lambda stderr=False: console(stderr, width=160))
    code = main(["show", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def _by_hand(case: Any, method: str) -> list[int]:
    r = case.methods[method].input_relevance
    labels = case.segment_labels()
    ok = [not sp and r[i] > 0 and not (case.masking.skip_template and labels[i] == "special")
          for i, sp in enumerate(case.special_mask)]
    return sorted((i for i in range(len(r)) if ok[i]), key=lambda i: (-r[i], i))[:case.masking.max_k]


def _masked_rows(out: str) -> list[list[str]]:
    """The rows of the masking-order table: [k, token, context, position, segment, R, Δℓ after k, mark]."""
    part = out.split("in masking order", 1)[1].split("relevance by segment", 1)[0]
    rows = [[c.strip() for c in line.rstrip().split("│")[1:-1]] for line in part.splitlines()
            if line.startswith("│")]
    return [r for r in rows if r and r[0].isdigit()]


def test_the_list_has_one_row_per_case(toy: dict[str, Any], capsys, monkeypatch) -> None:
    code, out, _ = _show(capsys, monkeypatch, "--store", str(toy["store"]))
    assert code == 0
    rows = [line for line in out.splitlines() if line.startswith("│")]
    assert len(rows) == len(toy["cases"])
    for c, row in zip(toy["cases"], rows):
        cells = [x.strip() for x in row.rstrip().split("│")[1:-1]]
        assert cells[0] == c.case_id[:12] and cells[2] == c.item_id
        assert float(cells[4]) == pytest.approx(c.delta_logit, abs=1e-3)
        assert cells[5] == c.effective_category and cells[6] == c.pattern
        k = c.methods["attnlrp"].flip_k
        assert cells[7] == ("none" if k is None else str(k))
    code, out, _ = _show(capsys, monkeypatch, "--store", str(toy["store"]), "--method", "gradxinput")
    rows = [[x.strip() for x in line.rstrip().split("│")[1:-1]] for line in out.splitlines() if line.startswith("│")]
    assert [r[7] for r in rows] == [("none" if c.methods["gradxinput"].flip_k is None
                                     else str(c.methods["gradxinput"].flip_k)) for c in toy["cases"]]


@pytest.mark.parametrize("method", ["attnlrp", "gradxinput"])
def test_one_case_lists_its_tokens_in_masking_order(toy: dict[str, Any], method: str, capsys, monkeypatch) -> None:
    with_rows = 0  # cases whose masking table had rows to check (the loops below check nothing on an empty one)
    for case in toy["cases"]:
        code, out, _ = _show(capsys, monkeypatch, "--store", str(toy["store"]), "--case", case.case_id[:10],
                             "--method", method)
        assert code == 0 and f"case {case.case_id}" in out
        said = " ".join(out.split())  # the command may wrap on a narrow console
        assert f"failtrace attribute --store {toy['store']} --case {case.case_id[:12]} --html" in said
        rows = _masked_rows(out)
        expected = _by_hand(case, method)
        assert [int(r[3]) for r in rows] == expected, case.case_id
        with_rows += bool(rows)
        r = case.methods[method]
        assert [row[8] == "◀" for row in rows] == [r.flip_k is not None and k <= r.flip_k
                                                   for k in range(1, len(rows) + 1)]
        # the model's top next token after masking the first k, as analyse recorded it
        assert len(r.flip_top_texts) == len(r.flip_curve)
        assert [row[7] for row in rows] == [shown(t) for t in r.flip_top_texts[1:len(rows) + 1]]
        assert [float(row[6]) for row in rows] == pytest.approx(r.flip_curve[1:len(rows) + 1], abs=1e-3)
        # the token, and the token marked ‹…› in its context
        for row in rows:
            tok = case.tokens[int(row[3])].replace(" ", "·").replace("\n", "↵")
            assert row[1] == tok and f"‹{tok}›" in row[2]
        # the per-method k* table: every method once, with its stored k*
        for name, m in case.methods.items():
            line = next(x for x in out.splitlines() if x.startswith(f"│ {name} "))
            assert line.split("│")[2].strip() == ("none" if m.flip_k is None else str(m.flip_k))
        # the segment table: the stored sums, whose `special` keeps the special ids, and says so
        part = out.split("relevance by segment", 1)[1]
        segs = {c[0]: c[1:] for c in ([x.strip() for x in line.split("│")[1:-1]] for line in part.splitlines()
                                      if line.startswith("│"))}
        labels = case.segment_labels()
        assert len(segs) == len(r.segment_relevance)
        for seg, value in r.segment_relevance.items():
            name = seg + (" (relevant)" if seg in case.relevant_segments else
                          " (chat template and special ids)" if seg == "special" else "")
            assert int(segs[name][0]) == labels.count(seg) and float(segs[name][1]) == pytest.approx(value, rel=1e-3)
    assert with_rows >= 1


def test_item_picks_the_same_case_and_store_is_unchanged(toy: dict[str, Any], capsys, monkeypatch) -> None:
    before = sha256(toy["store"])
    case = toy["cases"][1]
    _, by_case, _ = _show(capsys, monkeypatch, "--store", str(toy["store"]), "--case", case.case_id)
    code, by_item, _ = _show(capsys, monkeypatch, "--store", str(toy["store"]), "--item", case.item_id)
    assert code == 0 and by_item == by_case
    assert sha256(toy["store"]) == before


def test_an_older_analysis_names_the_case_the_views_show(toy: dict[str, Any], tmp_path: Path, capsys,
                                                         monkeypatch) -> None:
    from failtrace.cases.analyse import analyse
    from failtrace.cases.settings import CaseSettings
    from failtrace_testkit.toy import one_thread

    store = tmp_path / "two.duckdb"
    shutil.copy(toy["store"], store)
    old = toy["cases"][0]
    with one_thread(), open_store(store) as st:
        analyse(st, CaseSettings(methods=("attnlrp", "random"), max_k=3), progress=False)
        new = next(c for c in load_cases(st) if c.item_id == old.item_id)
    assert new.case_id != old.case_id
    code, _, err = _show(capsys, monkeypatch, "--store", str(store), "--case", old.case_id)
    assert code != 0 and len(err.strip().splitlines()) == 1
    assert "not from the current analysis" in err and new.case_id in err
    code, out, _ = _show(capsys, monkeypatch, "--store", str(store), "--case", new.case_id)
    assert code == 0 and len(_masked_rows(out)) == len(_by_hand(new, "attnlrp")) <= 3


@pytest.mark.parametrize("args, says", [
    (["--case", "zzzz"], "no case 'zzzz'"),
    (["--item", "no-such-item"], "no analysed case of item 'no-such-item' in"),
    (["--case", "a", "--item", "b"], "--case or --item, not both"),
    (["--item", "{item}", "--method", "nope"], "unknown --method 'nope'; valid: attnlrp, cp-lrp"),
    (["--method", "bogus"], "unknown --method 'bogus'"),  # the list too (it printed "—" for every case, exit 0)
    (["--benchmark", "nope"], "no runs for benchmark 'nope' in"),  # not an empty list with exit 0
])
def test_bad_input_is_one_line(toy: dict[str, Any], args: list[str], says: str, capsys, monkeypatch) -> None:
    args = [a.replace("{item}", toy["cases"][0].item_id) for a in args]
    code, out, err = _show(capsys, monkeypatch, "--store", str(toy["store"]), *args)
    assert code != 0 and "Traceback" not in err + out
    assert len(err.strip().splitlines()) == 1 and says in err


def test_method_names_are_case_insensitive(toy: dict[str, Any], capsys, monkeypatch) -> None:
    lower = _show(capsys, monkeypatch, "--store", str(toy["store"]))
    upper = _show(capsys, monkeypatch, "--store", str(toy["store"]), "--method", "ATTNLRP")
    assert upper == lower and lower[0] == 0 and "k*: attnlrp's" in " ".join(lower[1].split())


def test_a_missing_store_and_a_store_without_cases(toy: dict[str, Any], tmp_path: Path, capsys, monkeypatch) -> None:
    code, _, err = _show(capsys, monkeypatch, "--store", str(tmp_path / "none.duckdb"))
    assert code != 0 and len(err.strip().splitlines()) == 1 and "none.duckdb" in err
    with open_store(tmp_path / "empty.duckdb"):
        pass
    code, out, _ = _show(capsys, monkeypatch, "--store", str(tmp_path / "empty.duckdb"))
    assert code == 0 and re.search(r"no analysed cases", out)


def test_a_compared_case_shows_its_other_models_and_checkpoints(tmp_path_factory: pytest.TempPathFactory, capsys,
                                                                 monkeypatch) -> None:
    import torch
    from serve_store import compared_toy_store
    from transformers import AutoModelForCausalLM, AutoTokenizer

    info = compared_toy_store(tmp_path_factory.mktemp("show-compare"))
    with open_store(info["store"], read_only=True) as st:
        case = load_cases(st)[0]
        rows = st.con.execute("SELECT model, step, delta_logit, mapped, flip_k, flip_curve, token_ids, target_id, "
                              "contrast_id FROM comparisons WHERE case_id = ? AND NOT reference",
                              [case.case_id]).fetchall()
    assert len(rows) >= 3  # another model and two checkpoints
    code, out, _ = _show(capsys, monkeypatch, "--store", str(info["store"]), "--case", case.case_id)
    assert code == 0
    part = out.split("across models and checkpoints", 1)[1]
    lines = [[c.strip() for c in x.rstrip().split("│")[1:-1]] for x in part.splitlines() if x.startswith("│")]
    shown_rows = {(r[0], r[1]): r for r in lines}
    roles = set()
    for model, step, dl, mapped, k, curve, ids, target, contrast in rows:
        r = shown_rows[(str(model), "—" if step is None else str(step))]
        # k* as the case list words it: none = the curve ran without a flip; — = corrected already or no curve
        assert r[6] == (str(k) if k is not None and curve[0] >= 0 else "none" if curve and curve[0] >= 0 else "—")
        if mapped:
            assert float(r[3]) == pytest.approx(dl, abs=1e-3) and r[4] == ("yes" if dl < 0 else "no")
            # what that model writes there: plain transformers' argmax after the row's own context, and its role
            plain = AutoModelForCausalLM.from_pretrained(str(model)).eval()
            with torch.no_grad():
                logits = plain(input_ids=torch.tensor([list(ids)])).logits[0, -1]
            best = logits.topk(2)
            if float(best.values[0] - best.values[1]) < 1e-4:  # a near tie may go either way in float noise
                continue
            top = int(best.indices[0])
            role = "target" if top == target else "contrast" if top == contrast else "neither"
            text = AutoTokenizer.from_pretrained(str(model)).decode([top])
            assert r[5] == f"‹{shown(text)}› {role}", (model, step)
            roles.add(role)
        else:
            assert r[3] == "—" and r[4] == "not mapped" and r[5] == "—"
    assert roles  # some mapped row was checked


def test_two_runs_in_one_checkpoint_folder_are_told_apart(tmp_path_factory: pytest.TempPathFactory, capsys,
                                                           monkeypatch) -> None:
    """A second finetune into the same --out: its step-N has the path of the first run's; the rows said the same
    model twice. Each now names its series, as the report names it (computed here by compare_data)."""
    import shutil

    from serve_store import compared_toy_store

    info = compared_toy_store(tmp_path_factory.mktemp("show-two-runs"))
    store = info["store"].parent / "two-runs.duckdb"
    shutil.copy(info["store"], store)
    with open_store(store) as st:
        case_id, model, step = st.con.execute("SELECT case_id, model, step FROM comparisons WHERE step > 0 AND mapped "
                                              "ORDER BY case_id LIMIT 1").fetchone()
        st.con.execute("UPDATE comparisons SET training_run = 'aaaaaaaaaaaaaaaa' WHERE step IS NOT NULL")
        st.con.execute("INSERT INTO comparisons SELECT * REPLACE ('other-weights' AS model_fingerprint, "
                       "'bbbbbbbbbbbbbbbb' AS training_run, delta_logit - 1 AS delta_logit) FROM comparisons "
                       "WHERE case_id = ? AND model = ?", [case_id, model])
    code, out, _ = _show(capsys, monkeypatch, "--store", str(store), "--case", case_id)
    part = out.split("across models and checkpoints", 1)[1]
    lines = [[c.strip() for c in x.rstrip().split("│")[1:-1]] for x in part.splitlines() if x.startswith("│")]
    mine = sorted((r[7], r[3]) for r in lines if r[0] == model)  # the run is the last column
    folder = D.series_of(model)
    with open_store(store, read_only=True) as st:
        dls = sorted(st.con.execute("SELECT training_run, delta_logit FROM comparisons WHERE case_id = ? AND "
                                    "model = ?", [case_id, model]).fetchall())
    assert code == 0 and mine == [(f"(run {run[:8]})", f"{dl:.3f}") for run, dl in dls], (mine, dls)
    assert D.series_names([{"model": model, "step": step, "training_run": run} for run, _ in dls]) == {
        run: f"{folder} (run {run[:8]})" for run, _ in dls}  # the report's names of the two series


def test_an_item_without_a_case_says_where_it_stopped(toy: dict[str, Any], tmp_path: Path, capsys,
                                                      monkeypatch) -> None:
    """Read against the store's own rows: a passed item, a failure whose pair is not clean (its status and reason),
    a clean pair not analysed yet, an unknown item."""
    with open_store(toy["store"], read_only=True) as st:
        verdicts = st.results(toy["run_id"])
        pairs = {p["item_id"]: p for p in st.pairs()}
    cased = {c.item_id for c in toy["cases"]}
    passed = [v["item_id"] for v in verdicts if v["status"] == "pass"]
    unclean = [i for i, p in pairs.items() if p["status"] != "clean"]
    assert unclean and passed, "the toy store has a passed item and a failure without a clean pair"
    _, _, err = _show(capsys, monkeypatch, "--store", str(toy["store"]), "--item", passed[0])
    assert "judged pass: nothing to explain" in err
    item = unclean[0]
    code, _, err = _show(capsys, monkeypatch, "--store", str(toy["store"]), "--item", item)
    assert code != 0 and f"found no clean pair: {pairs[item]['status']} (" in err
    assert " ".join(pairs[item]["reason"].split())[:40] in err and len(err.strip().splitlines()) == 1
    long = tmp_path / "long.duckdb"  # a real reason of 340 characters was cut mid-phrase at 200, without a mark
    shutil.copy(toy["store"], long)
    for reason, end in (("why " * 85 + "end", "why why end)"), ("why " * 200, "why why why…)")):  # longer: marked
        with open_store(long) as st:
            st.con.execute("UPDATE pairs SET reason = ? WHERE item_id = ?", [reason, item])
        _, _, err = _show(capsys, monkeypatch, "--store", str(long), "--item", item)
        assert err.rstrip().endswith(end), err
    rigged = tmp_path / "rigged.duckdb"  # a reason can quote a checker's or worker's text: never raw controls
    shutil.copy(toy["store"], rigged)
    with open_store(rigged) as st:
        st.con.execute("UPDATE pairs SET reason = ? WHERE item_id = ?", ["bad \x1b[2J\x07 text", item])
    code, _, err = _show(capsys, monkeypatch, "--store", str(rigged), "--item", item)
    assert code != 0 and "\x1b" not in err and "\x07" not in err and "bad ␛[2J␇ text" in err
    # a clean pair whose case is not there yet: a store with the cases tables emptied
    store = tmp_path / "unanalysed.duckdb"
    shutil.copy(toy["store"], store)
    with open_store(store) as st:
        st.con.execute("DELETE FROM case_methods")
        st.con.execute("DELETE FROM cases")
    clean = sorted(cased)[0]
    _, _, err = _show(capsys, monkeypatch, "--store", str(store), "--item", clean)
    assert "its pair is clean, but the newest analysis has no case of it" in err
    _, _, err = _show(capsys, monkeypatch, "--store", str(store), "--item", "zz-none")
    assert "no such item was collected" in err


def test_markup_control_characters_and_long_tokens_print_as_data(toy: dict[str, Any], tmp_path: Path, capsys,
                                                                  monkeypatch) -> None:
    """Item ids and paths are data, not rich markup; a token carrying terminal escapes prints them as symbols, and
    a 300-character token is clipped so the table keeps its columns."""
    import json

    folder = tmp_path / "a[" / "]b"  # the path reads .../a[/]b/x[i].duckdb: a closing tag to rich
    folder.mkdir(parents=True)
    store = folder / "x[i].duckdb"
    shutil.copy(toy["store"], store)
    case = toy["cases"][0]
    top = _by_hand(case, "attnlrp")[0]
    tokens = list(case.tokens)
    tokens[top] = "\x1b[31mRED\x1b]0;pwned\x07" + "y" * 300
    with open_store(store) as st:
        st.con.execute("UPDATE cases SET item_id = ?, tokens = ? WHERE case_id = ?",
                       ["q[/]x[i]", json.dumps(tokens), case.case_id])
        texts = st.con.execute("SELECT flip_top_texts FROM case_methods WHERE case_id = ? AND method = 'attnlrp'",
                               [case.case_id]).fetchone()[0]
        texts[1] = "[bold]\x1b[2J" + "z" * 50  # a top token after masking is the model's text too
        st.con.execute("UPDATE case_methods SET flip_top_texts = ? WHERE case_id = ? AND method = 'attnlrp'",
                       [texts, case.case_id])
    code, out, err = _show(capsys, monkeypatch, "--store", str(store))
    assert code == 0 and "q[/]x[i]" in out and "a[/]b/x[i].duckdb" in out
    code, out, err = _show(capsys, monkeypatch, "--store", str(store), "--case", case.case_id)
    assert code == 0 and "\x1b" not in out and "\x07" not in out and "q[/]x[i]" in out
    rows = _masked_rows(out)
    # the token column is short (its context shows it too), both cut with …, never the other columns
    assert rows[0][1].startswith("␛[31mRED") and rows[0][1].endswith("…") and len(rows[0][1]) <= 12
    assert "‹␛[31mRED␛]0;pwned␇y" in rows[0][2]
    assert rows[0][7].startswith("[bold]␛[2Jz") and rows[0][7].endswith("…") and len(rows[0][7]) <= 12
    assert all(len(r) == 9 and r[3].isdigit() for r in rows)  # every column is still there


def test_an_old_case_whose_item_the_newest_analysis_lacks(toy: dict[str, Any], tmp_path: Path, capsys,
                                                          monkeypatch) -> None:
    from failtrace.cases.analyse import analyse
    from failtrace.cases.settings import CaseSettings
    from failtrace_testkit.toy import one_thread

    store = tmp_path / "limited.duckdb"
    shutil.copy(toy["store"], store)
    with one_thread(), open_store(store) as st:
        analyse(st, CaseSettings(methods=("attnlrp", "random"), max_k=2), limit=1, progress=False)
        newest = {c.item_id for c in load_cases(st)}
    old = next(c for c in toy["cases"] if c.item_id not in newest)
    code, _, err = _show(capsys, monkeypatch, "--store", str(store), "--case", old.case_id)
    assert code != 0 and len(err.strip().splitlines()) == 1
    assert "current analysis of pair run" in err and "which has no case of item" in err and "None" not in err
    code, _, err = _show(capsys, monkeypatch, "--store", str(store), "--item", old.item_id)
    assert code != 0 and "the newest analysis has no case of it" in err


def test_at_100_columns_numbers_and_labels_are_never_cut(toy: dict[str, Any], tmp_path: Path, capsys,
                                                         monkeypatch) -> None:
    """On the narrowest console failtrace prints (100 columns) the context and the pair give way; ids, Δℓ, category,
    pattern, k*, positions, R and Δℓ after k print whole (they were cut to '3.9…' and 'NC-IA+…', or vanished)."""
    from failtrace.cli import show as show_cli
    from failtrace.cli.console import console

    monkeypatch.setattr(show_cli, "_console", lambda stderr=False: console(stderr, width=100))
    store = tmp_path / "long.duckdb"  # long item ids and target texts, as real benchmarks have
    shutil.copy(toy["store"], store)
    with open_store(store) as st:
        st.con.execute("UPDATE cases SET item_id = 'a-rather-long-item-identifier-' || item_id, "
                       "target_text = 'a long target text ' || target_text")
    assert main(["show", "--store", str(store)]) == 0
    out = capsys.readouterr().out
    assert max(map(len, out.splitlines())) <= 100
    rows = [[x.strip() for x in line.split("│")[1:-1]] for line in out.splitlines() if line.startswith("│")]
    by_case = {c.case_id[:12]: c for c in toy["cases"]}
    assert sorted(r[0] for r in rows) == sorted(by_case)  # one row per case, every one checked below
    for r in rows:
        c = by_case[r[0]]
        assert r[-4:] == [f"{c.delta_logit:.3f}", c.effective_category, c.pattern,
                          "none" if c.methods["attnlrp"].flip_k is None else str(c.methods["attnlrp"].flip_k)]
    case = toy["cases"][0]
    assert main(["show", "--store", str(store), "--case", case.case_id]) == 0
    out = capsys.readouterr().out
    assert max(map(len, out.splitlines())) <= 100
    got = _masked_rows(out)
    r = case.methods["attnlrp"]
    assert [int(x[3]) for x in got] == _by_hand(case, "attnlrp")
    assert [float(x[5]) for x in got] == pytest.approx([r.input_relevance[p] for p in _by_hand(case, "attnlrp")],
                                                       rel=1e-3)
    assert [float(x[6]) for x in got] == pytest.approx(r.flip_curve[1:len(got) + 1], abs=1e-3)
    # the last columns too (they were cropped away at 100 columns once "top after k" was added)
    assert all(len(x) == 9 for x in got)
    assert [x[7] for x in got] == [clipped_text(shown(t), most=show_cli.TOP_CLIP_NARROW)
                                   for t in r.flip_top_texts[1:len(got) + 1]]
    assert [x[8] == "◀" for x in got] == [r.flip_k is not None and k <= r.flip_k for k in range(1, len(got) + 1)]


def test_every_view_shows_the_answer_the_checker_and_the_fix(toy: dict[str, Any], tmp_path: Path, capsys,
                                                             monkeypatch) -> None:
    """A case names a wrong token; without the model's answer, the checker's reason and the answer the pair search
    got with the contrast forced, no reader can judge it. failtrace show, the report and the explorer's case payload
    now print all three, read here from the store's own generations, verdicts and pairs tables."""
    import html
    import json

    from fastapi.testclient import TestClient

    from failtrace.serve.app import create_app
    from failtrace.views.common import prose_line

    with open_store(toy["store"], read_only=True) as st:
        gens = {r[0]: r[1] for r in st.con.execute("SELECT item_id, completion FROM generations").fetchall()}
        why = {r[0]: json.loads(r[1]) for r in st.con.execute("SELECT item_id, reasons FROM verdicts").fetchall()}
        fixed = {r[0]: r[1] for r in st.con.execute("SELECT item_id, recovered_completion FROM pairs").fetchall()}
        # the toy model never stops: each recovery passed as cut at the rollout budget, as its reason says
        cut = "  [passes the checker as cut at the rollout budget: it did not stop]"
        note = {r[0]: cut if "-token budget without stopping" in r[1] else "  [passes the checker]"
                for r in st.con.execute("SELECT item_id, reason FROM pairs").fetchall()}
    assert main(["report", "--store", str(toy["store"]), "--out", str(tmp_path / "rep")]) == 0
    page = (tmp_path / "rep" / "index.html").read_text()
    with TestClient(create_app(toy["store"]), base_url="http://127.0.0.1") as client:
        for case in toy["cases"]:
            wrote, said, forced = gens[case.item_id], "; ".join(why[case.item_id]), fixed[case.item_id]
            assert wrote and said and forced and wrote != forced
            code, out, _ = _show(capsys, monkeypatch, "--store", str(toy["store"]), "--case", case.case_id)
            assert code == 0
            lines = out.splitlines()
            # the predicted token's index, said as attribute's "explained position" (the last input token) reads
            assert len(case.tokens) == case.position and f"predicts token {case.position} from tokens " \
                f"0–{case.position - 1}\n" in out
            assert f"the model wrote: {prose_line(wrote)}" in lines
            assert f"the checker said: {prose_line(said)}" in lines
            assert f"with the contrast forced: {prose_line(forced)}{note[case.item_id]}" in lines
            article = page.split(f'id="case-{case.case_id}"', 1)[1].split("</article>", 1)[0]
            assert f"<dt>the model wrote</dt><dd><div class=\"text\">{html.escape(wrote)}</div></dd>" in article
            assert f'<dd><div class="text">{html.escape(forced)}</div><span class="cut">' \
                   f'{html.escape(note[case.item_id].strip())}</span></dd>' in article
            got = client.get(f"/api/cases/{case.case_id}").json()["answers"]
            assert got == [["the model wrote", wrote, ""], ["the checker said", said, ""],
                           ["with the contrast forced", forced, note[case.item_id].strip()]]


def test_where_a_text_stopped_survives_the_terminals_cut(toy: dict[str, Any], tmp_path: Path, capsys,
                                                         monkeypatch) -> None:
    """`show` cut a long answer to the terminal's width and the note at its end went with it: an answer cut at the
    budget read as whole. A forced answer that passed only as cut at the rollout budget (it never stopped, as its
    pair's reason says) was said to pass like any other. Both notes now stay, here, in the report and the explorer."""
    import duckdb
    from fastapi.testclient import TestClient

    from failtrace.serve.app import create_app

    store = tmp_path / "cut.duckdb"
    shutil.copy(toy["store"], store)
    case = toy["cases"][0]
    with duckdb.connect(str(store)) as con:
        con.execute("UPDATE generations SET completion = ?, finish_reason = 'length' WHERE item_id = ?",
                    ["word " * 100, case.item_id])
        con.execute("UPDATE pairs SET recovered_completion = ?, reason = reason || '; the recovering rollout reached "
                    "the 8-token budget without stopping' WHERE item_id = ?", ["other " * 100, case.item_id])
    code, out, _ = _show(capsys, monkeypatch, "--store", str(store), "--case", case.case_id)
    lines = {line.split(": ", 1)[0]: line for line in out.splitlines() if ": " in line}
    assert code == 0 and len(lines["the model wrote"]) <= 160
    assert lines["the model wrote"].endswith("… [stopped at the token budget]")
    forced = "  [passes the checker as cut at the rollout budget: it did not stop]"
    assert lines["with the contrast forced"].endswith("…" + forced)
    with TestClient(create_app(store), base_url="http://127.0.0.1") as client:
        got = {r[0]: r[1:] for r in client.get(f"/api/cases/{case.case_id}").json()["answers"]}
    assert got["with the contrast forced"] == ["other " * 100, forced.strip()]
    assert got["the model wrote"] == ["word " * 100, "[stopped at the token budget]"]
    # a forced answer longer than its scroll box (a real one passed on "******" in its 7th line): the HTML views
    # say how many lines it has, show prints it whole on one line
    many = "\n".join(map(str, range(1, 7))) + "\n******\n****"
    with duckdb.connect(str(store)) as con:
        con.execute("UPDATE pairs SET recovered_completion = ? WHERE item_id = ?", [many, case.item_id])
    with TestClient(create_app(store), base_url="http://127.0.0.1") as client:
        got = {r[0]: r[1:] for r in client.get(f"/api/cases/{case.case_id}").json()["answers"]}
    assert got["with the contrast forced"] == [many, forced.strip() + " · 8 lines: scroll the box for the rest"]
    assert got["the model wrote"] == ["word " * 100, "[stopped at the token budget]"]  # one line: no count
    assert main(["report", "--store", str(store), "--out", str(tmp_path / "rep")]) == 0
    page = (tmp_path / "rep" / "index.html").read_text()
    assert f'{forced.strip()} · 8 lines: scroll the box for the rest</span>' in page
    code, out, _ = _show(capsys, monkeypatch, "--store", str(store), "--case", case.case_id)
    assert "scroll" not in out and "1↵2↵3↵4↵5↵6↵******↵****" in out


def test_the_across_table_says_why_a_row_is_not_mapped(tmp_path_factory: pytest.TempPathFactory, capsys,
                                                         monkeypatch) -> None:
    """show printed 'not mapped' without the row's note (the explorer's API had it): a compare check found a reader
    of show could not tell why. Each row's notes now follow the table, control characters made visible."""
    import json
    import shutil

    from serve_store import compared_toy_store

    info = compared_toy_store(tmp_path_factory.mktemp("show-notes"))
    store = info["store"].parent / "notes.duckdb"
    shutil.copy(info["store"], store)
    with open_store(store) as st:
        case_id, model = st.con.execute("SELECT case_id, model FROM comparisons WHERE NOT reference AND step IS NULL "
                                        "ORDER BY case_id LIMIT 1").fetchone()
        st.con.execute("UPDATE comparisons SET mapped = false, delta_logit = NULL, notes = ? WHERE case_id = ? AND "
                       "model = ?", [json.dumps(["not one token here: target", "bad\x1b[2J"]), case_id, model])
    code, out, _ = _show(capsys, monkeypatch, "--store", str(store), "--case", case_id)
    flat = " ".join(out.split())
    assert code == 0 and f"note, {model}: not one token here: target; bad␛[2J" in flat, flat[-600:]
    assert "\x1b" not in out


def test_show_says_the_review_decision_in_force(toy: dict[str, Any], tmp_path: Path, capsys, monkeypatch) -> None:
    """An explorer walkthrough rejected a pair: export-dpo left it out, yet `show` said nothing of it. The decision
    in force (the newest accept or reject) is now a line of the case; an older one is not shown."""
    import shutil

    from failtrace.serve.app import REVIEWS_DDL

    store = tmp_path / "reviewed.duckdb"
    shutil.copy(toy["store"], store)
    case = toy["cases"][0]
    with open_store(store) as st:
        st.con.execute(REVIEWS_DDL)
        for n, (decision, when) in enumerate((("reject", "2026-12-07 10:00:00"), ("accept", "2026-12-07 11:00:00"),
                                              ("reject", "2026-12-07 12:00:00"))):
            st.con.execute("INSERT INTO reviews (review_id, pair_run_id, item_id, case_id, decision, comment, "
                           "created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                           [f"r{n}", case.pair_run_id, case.item_id, case.case_id, decision, f"why {n}\x07", when])
    code, out, _ = _show(capsys, monkeypatch, "--store", str(store), "--case", case.case_id)
    flat = " ".join(out.split())
    assert code == 0 and ("review: the pair was rejected (2026-12-07 12:00:00 UTC: why 2␇); export-dpo, finetune, "
                          "status and the report leave it out") in flat, flat[:800]
    assert "why 1" not in flat and "why 0" not in flat
    code, out, _ = _show(capsys, monkeypatch, "--store", str(toy["store"]), "--case", case.case_id)
    assert "review:" not in out  # no reviews table: nothing said
