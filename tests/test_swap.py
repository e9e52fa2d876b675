"""Staged files moved into place all or nothing (``failtrace.swap``): Ctrl-C and SIGTERM wait for the moves, and the
earlier files of a swap killed outright (SIGKILL runs no clean-up) are kept and named by the next run into the same
folder, never deleted with its staging folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_tempdirs import dead_pid

from failtrace.tempdirs import owned_tempdir

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _swap_setup(tmp_path: Path) -> tuple[Path, Path, list[Path], list[tuple[Path, Path]]]:
    out, stage = tmp_path / "out", tmp_path / "stage"
    out.mkdir()
    (stage / "old").mkdir(parents=True)
    for i in range(4):
        (out / f"f{i}.txt").write_text(f"old {i}")
        (stage / f"f{i}.txt").write_text(f"new {i}")
    aside = [out / f"f{i}.txt" for i in range(4)]
    return out, stage, aside, [(stage / f"f{i}.txt", out / f"f{i}.txt") for i in range(4)]


def test_a_ctrl_c_between_a_rename_and_its_record_loses_no_file(tmp_path: Path) -> None:
    """SIGINT arriving right after a rename (before the swap has recorded it) raised at once: that file was neither
    undone nor in place, and the caller's clean-up then deleted it. The signal now waits until every move is done,
    then interrupts as usual, with the new files all in place and the old ones all aside."""
    from failtrace.swap import swap_in

    out, stage, aside, new = _swap_setup(tmp_path)
    calls = {"n": 0}

    def move(src: Path, dst: Path) -> None:
        src.replace(dst)
        calls["n"] += 1
        if calls["n"] == 2:  # the second old file has just been moved aside
            os.kill(os.getpid(), __import__("signal").SIGINT)

    signal = __import__("signal")
    before = signal.signal(signal.SIGINT, signal.default_int_handler)  # Python's own (an earlier test may set another)
    try:
        with pytest.raises(KeyboardInterrupt):
            swap_in(aside, new, stage, out, ".export-", move)
    finally:
        signal.signal(signal.SIGINT, before)
    assert calls["n"] == 8
    assert {p.name: p.read_text() for p in out.iterdir()} == {f"f{i}.txt": f"new {i}" for i in range(4)}
    assert {p.name: p.read_text() for p in (stage / "old").iterdir()} == {f"f{i}.txt": f"old {i}" for i in range(4)}


def test_a_second_ctrl_c_while_undoing_a_failed_swap_puts_every_file_back(tmp_path: Path) -> None:
    """A move fails (a full disk) and the swap undoes the moves; a Ctrl-C then stopped the undoing halfway. Now every
    old file is back in place first."""
    import errno
    import signal

    from failtrace.swap import swap_in

    out, stage, aside, new = _swap_setup(tmp_path)
    calls = {"n": 0}

    def move(src: Path, dst: Path) -> None:
        calls["n"] += 1
        if calls["n"] == 7:
            raise OSError(errno.ENOSPC, "No space left on device")
        if calls["n"] == 8:  # the first move back
            os.kill(os.getpid(), signal.SIGINT)
        src.replace(dst)

    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):  # the held Ctrl-C, raised once every file is back
            swap_in(aside, new, stage, out, ".export-", move)
    finally:
        signal.signal(signal.SIGINT, before)
    assert {p.name: p.read_text() for p in out.iterdir()} == {f"f{i}.txt": f"old {i}" for i in range(4)}


# A child process stages 4 new files (f0-f3) over an earlier output (f0-f2 and a file of the user's), and is
# SIGKILLed at a chosen point of the swap: before the n-th move, right after its rename (before the swap records
# it), right after the n-th move when undoing a failed one (the 5th, or the 4th with f0 put back first), or just
# after the swap returned.
_CHILD = """
import os, signal, sys
from pathlib import Path
from failtrace.swap import move_file, swap_in
from failtrace.tempdirs import owned_tempdir
out, when, n = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
stage = owned_tempdir(out, ".export-", ".part")
for i in range(4):
    (stage / f"f{i}.txt").write_text(f"new {i}")
calls = 0
fail_at = {"undo": 5, "undo-first": 4}.get(when, 0)  # the 2nd or the 1st new file's move fails
order = [1, 2, 0] if when == "undo-first" else [0, 1, 2]  # f0 the last aside: the first one put back
def move(src, dst):
    global calls
    calls += 1
    if calls == fail_at:
        raise OSError(28, "No space left on device")
    if when == "before" and calls == n:
        os.kill(os.getpid(), signal.SIGKILL)
    move_file(src, dst)
    if when != "before" and calls == n:
        os.kill(os.getpid(), signal.SIGKILL)
try:
    swap_in([out / f"f{i}.txt" for i in order], [(stage / f"f{i}.txt", out / f"f{i}.txt") for i in range(4)],
            stage, out, ".export-", move)
except OSError:
    pass
os.kill(os.getpid(), signal.SIGKILL)
"""
_OLD = {"f0.txt": "old 0", "f1.txt": "old 1", "f2.txt": "old 2", "mine.txt": "the user's own"}


def _killed_swap(out: Path, when: str, n: int, code: str = _CHILD) -> None:
    out.mkdir()
    for name, text in _OLD.items():
        (out / name).write_text(text)
    proc = subprocess.run([sys.executable, "-c", code, str(out), when, str(n)], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": SRC})
    assert proc.returncode == -9, proc.stderr
    assert len(list(out.glob(".export-*.part"))) == 1


def _files(out: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in out.iterdir() if p.is_file()}


def _kept(out: Path) -> list[Path]:
    return [p for p in out.iterdir() if p.name.startswith(".export-kept-")]


def _no_earlier_file_lost(out: Path) -> None:
    """Each earlier file is in place unchanged or in the kept folder's old/, byte for byte."""
    kept = _kept(out)
    held = _files(kept[0] / "old") if kept else {}
    here = _files(out)
    for name, text in _OLD.items():
        assert here.get(name) == text or held.get(name) == text, (name, here, held)


@pytest.mark.parametrize(("when", "n"), [("before", 2), ("before", 4), ("before", 6),
                                         ("after", 1), ("after", 3), ("after", 4), ("after", 7),
                                         ("undo", 6), ("undo", 7), ("undo-first", 5)])
def test_a_swap_killed_midway_keeps_the_earlier_files_and_says_where(tmp_path: Path, when: str, n: int,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """Killed midway, the folder was half old and half new, and the next run's sweep deleted the staging folder
    with the earlier files it held aside. Now the next run keeps that folder under a name no sweep removes and says
    where; nothing is moved back by itself (see failtrace/swap.py for why)."""
    out = tmp_path / "out"
    _killed_swap(out, when, n)
    mine = owned_tempdir(out, ".export-", ".part", keep_cut=True)
    kept = _kept(out)
    assert len(kept) == 1 and not (kept[0] / "swapping").exists()
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == sorted([mine.name, kept[0].name])
    _no_earlier_file_lost(out)
    err = capsys.readouterr().err
    assert err == (f"failtrace: an earlier run into {out} did not finish moving its files into place, so the folder "
                   f"may mix old and new files; the earlier files it had moved aside are in {kept[0] / 'old'}\n")
    owned_tempdir(out, ".export-", ".part", keep_cut=True)
    assert _kept(out) == kept and capsys.readouterr().err == ""  # said once; no later run removes it


@pytest.mark.parametrize(("when", "n"), [("before", 1), ("done", 0)])
def test_a_swap_killed_before_its_first_move_aside_or_after_it_ended_leaves_nothing_to_keep(
        tmp_path: Path, when: str, n: int, capsys: pytest.CaptureFixture[str]) -> None:
    """Nothing earlier was moved aside yet, or every new file is in place: the folder goes, as any dead run's."""
    out = tmp_path / "out"
    _killed_swap(out, when, n)
    owned_tempdir(out, ".export-", ".part", keep_cut=True)
    assert not _kept(out) and len([p for p in out.iterdir() if p.is_dir()]) == 1 and capsys.readouterr().err == ""
    new = {"mine.txt": "the user's own", **{f"f{i}.txt": f"new {i}" for i in range(4)}}
    assert _files(out) == (_OLD if when == "before" else new)


def test_a_copy_across_file_systems_cut_midway_loses_no_earlier_file(tmp_path: Path) -> None:
    """A linked folder on another file system is copied, not renamed: the copy goes to a side name and is renamed
    into place, so a file in place is never a part. Killed in the middle of a copy, every earlier file is kept."""
    child = _CHILD.replace("import os, signal, sys\n", """import errno, os, shutil, signal, sys
def other_fs(src, dst):
    raise OSError(errno.EXDEV, "Invalid cross-device link")
copies = 0
def cut(src, dst, follow_symlinks=True):
    global copies
    copies += 1
    if copies == int(sys.argv[3]):
        open(dst, "w").write("par")
        os.kill(os.getpid(), signal.SIGKILL)
    real_copy(src, dst, follow_symlinks=follow_symlinks)
real_copy, os.rename, shutil.copy2 = shutil.copy2, other_fs, cut
""")
    out = tmp_path / "out"
    _killed_swap(out, "never", 5, code=child)
    parts = [name for name, text in _files(out).items() if text == "par"]
    assert len(parts) == 1 and parts[0].endswith(".moving")  # the part is under its side name, never a real one
    owned_tempdir(out, ".export-", ".part", keep_cut=True)
    _no_earlier_file_lost(out)


def test_an_undone_swap_removes_the_folders_it_made(tmp_path: Path) -> None:
    """A failed swap put every file back but left the folders its new files needed (``tables/``,
    ``figures/graphs/``) in the output folder, empty; a folder that was there before stays."""
    from failtrace.swap import swap_in

    out, stage = tmp_path / "out", tmp_path / "out" / ".stage"
    (out / "figures").mkdir(parents=True)
    (out / "empty-of-mine").mkdir()
    for rel in ("figures/graphs/a.png", "tables/t.csv", "index.html"):
        (stage / rel).parent.mkdir(parents=True, exist_ok=True)
        (stage / rel).write_text("new")
    new = [(stage / rel, out / rel) for rel in ("figures/graphs/a.png", "tables/t.csv", "index.html")]

    def move(src: Path, dst: Path) -> None:
        if dst.name == "index.html":
            raise OSError(28, "No space left on device")
        dst.parent.mkdir(parents=True, exist_ok=True)
        src.replace(dst)

    with pytest.raises(OSError):
        swap_in([], new, stage, out, ".export-", move)
    assert sorted(p.name for p in out.iterdir()) == [".stage", "empty-of-mine", "figures"]
    assert list((out / "figures").iterdir()) == [] and (stage / "figures" / "graphs" / "a.png").is_file()


def test_a_failed_undo_names_only_what_is_really_out_of_place(tmp_path: Path) -> None:
    """A new file whose move back failed was counted as an earlier file not put back (a kept folder, and an error
    pointing at an empty old/), although the earlier file of its name went back over it. Now only earlier files still
    held aside are lost, and a new file left in the folder is named as such."""
    from failtrace.swap import NotPutBack, failure, swap_in

    out, stage, aside, new = _swap_setup(tmp_path)
    (stage / "extra.txt").write_text("new extra")  # no earlier file of this name
    new.append((stage / "extra.txt", out / "extra.txt"))
    calls = {"n": 0}

    def move(src: Path, dst: Path) -> None:
        calls["n"] += 1
        if calls["n"] == 9:  # the last move into place fails
            raise OSError(28, "No space left on device")
        if stage in dst.parents and dst.parent == stage and dst.name in ("f2.txt", "extra.txt"):
            raise OSError(5, "Input/output error")  # taking these two new files out again fails
        src.replace(dst)

    new[-1], new[-2] = new[-2], new[-1]  # extra.txt moves in before f3.txt, whose move fails
    with pytest.raises(NotPutBack) as err:
        swap_in(aside, new, stage, out, ".export-", move)
    assert err.value.lost == [] and err.value.left == [out / "extra.txt"]
    assert {p.name: p.read_text() for p in out.iterdir() if p.is_file()} == \
        {**{f"f{i}.txt": f"old {i}" for i in range(4)}, "extra.txt": "new extra"}
    assert str(failure(err.value, "export", out)) == (f"cannot write the export into {out}: No space left on device; 1 "
                                                   f"new file(s) could not be taken out again (extra.txt)")


def test_a_copy_across_file_systems_whose_source_cannot_be_deleted_is_no_move(tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The copy was in place and the source's delete failed: the move raised but its file stayed at both ends, and
    the undo (which undoes only moves that returned) left the new file in the output folder."""
    import errno

    from failtrace.swap import move_file

    src, dst = tmp_path / "stage" / "a.png", tmp_path / "out" / "figures" / "a.png"
    src.parent.mkdir()
    src.write_bytes(b"new")
    real_unlink = os.unlink

    def other_fs(s: object, d: object) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    def stuck(p: object) -> None:
        if Path(str(p)) == src:
            raise OSError(errno.EIO, "Input/output error")
        real_unlink(p)

    monkeypatch.setattr(os, "rename", other_fs)
    monkeypatch.setattr(os, "unlink", stuck)
    with pytest.raises(OSError, match="Input/output"):
        move_file(src, dst)
    monkeypatch.undo()
    assert src.read_bytes() == b"new" and not any(dst.parent.iterdir())


def test_a_kill_that_left_only_a_part_of_a_copy_aside_keeps_nothing(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """Killed while copying the first earlier file aside across file systems: old/ holds only the part under its
    side name, and the earlier file is still whole in place. Nothing is kept, and no line points at an old/ that
    holds no earlier file."""
    from failtrace.tempdirs import place

    out = tmp_path / "out"
    (out / "figures").mkdir(parents=True)
    (out / "figures" / "overview.png").write_text("old overview")
    stage = out / f".report-{dead_pid()}-{place()}-abcdefgh.part"
    (stage / "old" / "figures").mkdir(parents=True)
    (stage / "old" / "figures" / ".overview.png.moving").write_text("old ov")
    (stage / "swapping").write_text("")
    owned_tempdir(out, ".report-", ".part", keep_cut=True)
    assert not stage.exists() and not [p for p in out.iterdir() if "kept" in p.name]
    assert capsys.readouterr().err == "" and (out / "figures" / "overview.png").read_text() == "old overview"


def test_keep_refuses_a_name_that_is_taken_and_a_half_written_marker_is_removed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A rename onto an existing empty folder succeeds quietly: keep() would have put a staging folder in place of
    another kept one. And a marker half written on a full disk was left, so the staged files were kept for it."""
    import errno

    import failtrace.swap as swap

    monkeypatch.setattr(swap.time, "strftime", lambda _fmt: "20261207-120000")
    monkeypatch.setattr(swap.secrets, "token_hex", lambda _n: "abc")
    stage = tmp_path / "stage"
    stage.mkdir()
    (tmp_path / ".export-kept-20261207-120000-abc").mkdir()
    with pytest.raises(FileExistsError):
        swap.keep(stage, ".export-")
    assert stage.is_dir()
    monkeypatch.undo()

    (tmp_path / "second").mkdir()
    out, stage, aside, new = _swap_setup(tmp_path / "second")
    real = Path.write_text

    def full(self: Path, text: str, *args: object, **kwargs: object) -> int:
        if self.name == swap.MARKER:
            real(self, text[:5])
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, text, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(OSError, match="No space"):
        swap.swap_in(aside, new, stage, out, ".export-")
    assert not (stage / swap.MARKER).exists()
    assert {p.name: p.read_text() for p in out.iterdir()} == {f"f{i}.txt": f"old {i}" for i in range(4)}


def test_a_move_that_took_effect_and_still_raised_is_undone(tmp_path: Path) -> None:
    """A rename that happened and then reported failure (a retried rename on a network file system) was not in the
    undo's list: the earlier file stayed in old/, the marker went, and the clean-up deleted it."""
    from failtrace.swap import MARKER, swap_in

    out, stage, aside, new = _swap_setup(tmp_path)
    calls = {"n": 0}

    def move(src: Path, dst: Path) -> None:
        calls["n"] += 1
        src.replace(dst)
        if calls["n"] == 2:  # the second earlier file is in old/, and the move says it failed
            raise OSError(5, "Input/output error")

    with pytest.raises(OSError, match="Input/output"):
        swap_in(aside, new, stage, out, ".export-", move)
    assert {p.name: p.read_text() for p in out.iterdir()} == {f"f{i}.txt": f"old {i}" for i in range(4)}
    assert not list((stage / "old").iterdir()) and not (stage / MARKER).exists()


def test_a_sweep_goes_on_past_an_orphan_it_cannot_remove(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One dead run's folder that cannot be removed stopped the sweep, and the rest stayed."""
    import failtrace.tempdirs as tempdirs
    from failtrace.tempdirs import place

    dead = dead_pid()
    orphans = [tmp_path / f".export-{dead}-{place()}-{c * 8}.part" for c in "ab"]
    for o in orphans:
        o.mkdir()
    real = tempdirs.remove_tree

    def stuck_first(path: object) -> None:
        if str(path) == str(orphans[0]):
            raise OSError(16, "Device or resource busy")
        real(path)

    monkeypatch.setattr(tempdirs, "remove_tree", stuck_first)
    assert tempdirs.sweep_orphans(tmp_path, ".export-", ".part") == [orphans[1].name]
    assert orphans[0].is_dir() and not orphans[1].exists()


def test_a_staging_folder_whose_marker_cannot_be_checked_is_left_and_the_run_still_ends(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The clean-up at the end of a finished export or report asks whether the marker exists; a permission error
    there (a folder made unreadable meanwhile) turned the finished run into an error. Not knowing, it keeps the
    folder: the next run's sweep decides (a folder it may hold earlier files in is never removed blindly)."""
    from failtrace.swap import MARKER
    from failtrace.tempdirs import staging

    real = Path.exists

    def denied(self: Path) -> bool:
        if self.name == MARKER:
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    with staging(tmp_path, ".export-") as stage:
        (stage / "f.txt").write_text("new")
        monkeypatch.setattr(Path, "exists", denied)
    monkeypatch.setattr(Path, "exists", real)
    assert stage.is_dir() and (stage / "f.txt").read_text() == "new"
