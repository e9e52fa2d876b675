"""Folders written aside and moved into place (sandbox runs, checkpoints, exports, model conversions, pip installs)
are removed by the next folder of their kind once the process that made them is gone (SIGKILL runs no cleanup)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from failtrace.tempdirs import owned_tempdir, place, sweep_orphans

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _killed_owner(parent: Path, kind: str, suffix: str = "") -> Path:
    """A folder made by a process that was then SIGKILLed (it never removed it)."""
    code = ("import os, signal, sys; from failtrace.tempdirs import owned_tempdir\n"
            f"print(owned_tempdir({str(parent)!r}, {kind!r}, {suffix!r}), flush=True)\n"
            "os.kill(os.getpid(), signal.SIGKILL)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": SRC})
    assert proc.returncode == -9, proc.stderr
    left = Path(proc.stdout.strip())
    (left / "weights.bin").write_bytes(b"x" * 1000)
    assert left.is_dir() and left.name.startswith(kind)
    return left


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_a_killed_processs_folder_is_removed_by_the_next_of_its_kind(tmp_path: Path) -> None:
    left = _killed_owner(tmp_path, ".step-")
    dead = dead_pid()
    keep = [tmp_path / f".old-step-{dead}-{place()}-abcdefgh",  # another kind: only its own kind sweeps it
            tmp_path / f".step-{dead}-{'0' * 8 if place() != '0' * 8 else '1' * 8}-abcdefgh",  # another machine or
            # PID namespace sharing the folder: its process ids mean other processes
            tmp_path / ".step-2024", tmp_path / f".step-{dead}-notes",  # a user's own folders, never touched
            tmp_path / ".step-1-abc"]  # an older layout without the place
    for p in keep:
        p.mkdir()
        (p / "mine.txt").write_text("keep")
    file_ = tmp_path / f".step-{dead}-{place()}-abcdefgz"  # not a folder: left
    file_.write_text("keep")
    mine = owned_tempdir(tmp_path, ".step-")
    assert mine.name.startswith(f".step-{os.getpid()}-{place()}-") and mine.is_dir()
    assert not left.exists() and file_.read_text() == "keep"
    assert all((p / "mine.txt").read_text() == "keep" for p in keep)
    assert owned_tempdir(tmp_path, ".step-").is_dir() and mine.is_dir()  # a live process's folder stays
    assert sweep_orphans(tmp_path, ".old-step-") == [keep[0].name] and not keep[0].exists()


def test_an_export_and_a_checkpoint_remove_a_killed_ones_leftovers(tmp_path: Path) -> None:
    """The real writers: a killed export's .export-*.part and a killed save's .step-* stayed in --out for ever."""
    from failtrace.store.store import open_store
    from failtrace.training.checkpoints import save_checkpoint
    from test_store import _gen, _items, _run

    from failtrace.benchmarks.base import Verdict

    store = tmp_path / "s.duckdb"
    with open_store(store) as st:
        st.ensure_run(_run())
        st.add_items("r1", "toy", _items(1))
        st.write_result("r1", _items()[0], _gen([7, 8, 2]), Verdict("fail", ["because"]))
    out = tmp_path / "exp"
    out.mkdir()
    left = _killed_owner(out, ".export-", ".part")
    with open_store(store, read_only=True) as st:
        st.export(out, "jsonl")
    assert not left.exists() and not list(out.glob(".export-*"))

    class Saves:  # the save_pretrained of a model and of a tokenizer, as checkpoints call them
        def save_pretrained(self, folder: Path, **_: object) -> None:
            (Path(folder) / "model.safetensors").write_bytes(b"w")
            (Path(folder) / "tokenizer_config.json").write_text("{}")

    ck = tmp_path / "ck"
    ck.mkdir()
    left = _killed_owner(ck, ".step-")
    saved = save_checkpoint(Saves(), Saves(), ck, 3, {"method": "sft"})
    assert saved.name == "step-3" and not left.exists() and sorted(p.name for p in ck.iterdir()) == ["step-3"]
