"""Item ids in natural order (``q5`` before ``q10``) wherever items are listed by id: the key itself against an
independent integer-based reference, then the report's case order (load_cases) and the explorer's item column on a
real analysed store whose ids were renumbered so that plain string order differs."""

from __future__ import annotations

import random
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from serve_store import analysed_toy_store  # noqa: E402

from fastapi.testclient import TestClient  # noqa: E402

from failtrace.serve.app import create_app  # noqa: E402
from failtrace.store import open_store  # noqa: E402
from failtrace.store.cases import load_cases  # noqa: E402
from failtrace.store.natural import natural_key  # noqa: E402


def _reference(text: str) -> tuple[tuple[int, Any], ...]:
    """Runs of digits compared as integers, other runs as text, digits before letters."""
    return tuple((0, int(r)) if r.isdigit() else (1, r) for r in re.findall(r"\d+|\D+", text))


def test_benchmark_ids_sort_by_their_numbers() -> None:
    rng = random.Random(0)
    humaneval = [f"HumanEval/{i}" for i in range(164)]
    ifeval = [str(k) for k in rng.sample(range(1, 4000), 60)]
    math = [f"test/{s}/{n}.json" for s in ("algebra", "geometry") for n in rng.sample(range(1, 3000), 20)]
    for ids, number in ((humaneval, lambda s: int(s.split("/")[1])), (ifeval, int),
                        (math, lambda s: (s.split("/")[1], int(s.split("/")[2][:-5])))):
        shuffled = rng.sample(ids, len(ids))
        assert sorted(shuffled, key=natural_key) == sorted(ids, key=number)
    assert sorted(["HumanEval/10", "HumanEval/2"]) == ["HumanEval/10", "HumanEval/2"]  # what plain order does


def test_random_ids_match_the_integer_reference() -> None:
    rng = random.Random(1)

    def word() -> str:  # letters/underscore (all above the digits) and numbers without leading zeros
        return "".join(rng.choice([rng.choice("abz_"), str(rng.randrange(1, 10 ** rng.randrange(1, 12)))])
                       for _ in range(rng.randrange(1, 5)))

    ids = list({word() for _ in range(2000)})
    assert sorted(ids, key=natural_key) == sorted(ids, key=_reference)
    assert natural_key(None) == "" < natural_key("0")


def _renumber(store: Path) -> dict[str, str]:
    """Item q00i becomes q{5 i}: q0, q5, q10, ... (plain order would put q10 before q5); in every table."""
    with open_store(store) as st:
        tables = [r[0] for r in st.con.execute(
            "SELECT DISTINCT table_name FROM information_schema.columns WHERE column_name = 'item_id'").fetchall()]
        old = sorted({r[0] for r in st.con.execute("SELECT item_id FROM generations").fetchall()})
        new = {o: f"q{5 * int(o[1:])}" for o in old}
        for table in tables:
            for o, n in new.items():
                st.con.execute(f"UPDATE {table} SET item_id = ? WHERE item_id = ?", [n, o])
    return new


@pytest.fixture(scope="module")
def renumbered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    info = analysed_toy_store(tmp_path_factory.mktemp("natural"))
    info["ids"] = _renumber(info["store"])
    return info


def test_report_cases_come_in_natural_order(renumbered: dict[str, Any]) -> None:
    with open_store(renumbered["store"], read_only=True) as st:
        cases = load_cases(st)
    got = [c.item_id for c in cases]
    want = sorted(got, key=lambda s: int(s[1:]))
    assert want != sorted(got)  # the renumbered ids tell natural order from plain string order (q5 vs q10)
    assert len(got) >= 3 and got == want


def test_explorer_item_column_sorts_naturally(renumbered: dict[str, Any], tmp_path: Path) -> None:
    copy = tmp_path / "runs.duckdb"
    shutil.copy(renumbered["store"], copy)
    numbers = sorted(int(n[1:]) for n in renumbered["ids"].values())
    with TestClient(create_app(copy), base_url="http://127.0.0.1") as client:
        for desc in (False, True):
            rows = client.get("/api/table", params={"sort": "item_id", "desc": desc, "limit": 500}).json()["rows"]
            assert [int(r["item_id"][1:]) for r in rows] == (numbers[::-1] if desc else numbers)
        first = client.get("/api/table", params={"limit": 3}).json()["rows"]  # the default sort: item, ascending
        assert [r["item_id"] for r in first] == [f"q{n}" for n in numbers[:3]]
