"""A real results store for the explorer tests: the toy model's collect + pairs (tests/cases_toy.py) and then
``analyse``, so every table the explorer reads holds rows the pipeline wrote (about 20 s on one CPU thread)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from cases_toy import build_toy_store

from failtrace.cases.analyse import analyse
from failtrace.store import open_store
from failtrace_testkit.toy import one_thread


def analysed_toy_store(folder: Path, n_items: int = 8) -> dict[str, Any]:
    """``folder/runs.duckdb`` with cases; returns build_toy_store's dict plus the analysis summary."""
    with one_thread():
        info = build_toy_store(folder / "runs.duckdb", folder / "model", n_items=n_items)
        with open_store(info["store"]) as st:
            info["summary"] = analyse(st, progress=False)
    return info


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def compared_toy_store(folder: Path, n_items: int = 8) -> dict[str, Any]:
    """The analysed toy store plus comparisons: ``failtrace compare`` against a second toy model (seed 1), and two
    "checkpoints" (toy models of seeds 2 and 3 saved as ``ckpts/toy/step-0`` and ``step-50``) re-scored with the same
    :func:`~failtrace.cases.compare.rescore` and stored with a step and a split (the first half of the cases
    'trained', the rest 'held-out'). Returns analysed_toy_store's dict plus ``names``, ``checkpoints``, ``compare``."""
    from failtrace.cases.compare import compare, rescore
    from failtrace.models.fingerprint import model_fingerprint
    from failtrace.models.loading import load_model
    from failtrace.store.cases import load_cases
    from failtrace.store.comparisons import write_comparison
    from failtrace_testkit.toy import save_toy_model

    info = analysed_toy_store(folder, n_items)
    with one_thread():
        save_toy_model(folder / "other", seed=1)
        names = [str(info["model_dir"]), str(folder / "other")]
        lms = {n: load_model(n, progress=False) for n in names}
        ckpts = []
        with open_store(info["store"]) as st:
            info["compare"] = compare(st, names, models=lms, progress=False)
            cases = load_cases(st)
            ref = lms[names[0]].tokenizer
            for seed, step in ((2, 0), (3, 50)):
                path = folder / "ckpts" / "toy" / f"step-{step}"
                save_toy_model(path, seed=seed)
                lm = load_model(str(path), progress=False)
                fp = model_fingerprint(lm)
                ckpts.append(str(path))
                for i, case in enumerate(cases):
                    item = st.get_item(case.benchmark, case.item_id)
                    prefix = ref.decode(case.token_ids[case.prompt_length:], skip_special_tokens=False,
                                        clean_up_tokenization_spaces=False)
                    row = rescore(lm, case, item, prefix, str(path), fp)
                    row |= {"step": step, "split": "trained" if i < len(cases) // 2 else "held-out"}
                    write_comparison(st, row)
    info.update(names=names, checkpoints=ckpts)
    return info
