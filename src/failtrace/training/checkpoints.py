"""Checkpoint folders: plain transformers folders (``from_pretrained`` loads them) plus failtrace's metadata file.

``OUT/step-N/`` holds ``config.json``, ``model.safetensors``, the tokenizer files and ``failtrace_checkpoint.json``:
method, step, the run's settings, the base model's name and content fingerprint, and the trained and held-out case
ids (the split ``compare --checkpoints`` reads). A folder is written into a temporary sibling and renamed into
place, so a reader never sees half a checkpoint, and a folder overwritten by a later run gets new files (new inodes,
new content fingerprint: :mod:`failtrace.models.fingerprint`), never mistaken for the old one.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from failtrace.errors import FailtraceError
from failtrace.tempdirs import owned_tempdir

METADATA_FILE = "failtrace_checkpoint.json"
FORMAT = 1


def _umask() -> int:
    """The process's umask, read from /proc (Linux) without changing it: setting it to read it would, for a moment,
    give every file another thread creates no mask at all. Elsewhere the common 022."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022


def numbered(name: str, prefix: str) -> int | None:
    """N of a folder named ``prefix`` + N (ASCII digits only: ``step-²`` is no step, and ``int`` would fail on it)."""
    rest = name[len(prefix):] if name.startswith(prefix) else ""
    return int(rest) if rest.isascii() and rest.isdigit() else None


def step_folder(out: str | Path, step: int) -> Path:
    """The folder of the checkpoint saved at ``step``."""
    return Path(out) / f"step-{int(step)}"


def check_replaceable(out: str | Path, store: str | Path | None = None) -> None:
    """Refuse an ``out`` whose ``step-N`` entries are not all failtrace checkpoint folders, or that holds ``store``:
    saving replaces a ``step-N`` whole, and what some other program wrote there (a results store, for one) is not
    ours to delete."""
    out = Path(out).expanduser()
    inside = next((p for p in (out.resolve(), *out.resolve().parents) if (p / METADATA_FILE).is_file()), None)
    if inside is not None:  # its step-N folders would vanish when a run into the checkpoint's own --out replaces it
        raise FailtraceError(f"--out {out} is {'the' if inside == out.resolve() else 'inside the'} checkpoint "
                             f"{inside}; give a folder of its own (e.g. beside it)")
    if not out.is_dir():
        return
    if store is not None:
        held = Path(store).expanduser().resolve()
        for entry in out.glob("step-*"):
            if entry.resolve() == held or entry.resolve() in held.parents:
                raise FailtraceError(f"--store {store} lies in {entry}, which finetune replaces with a checkpoint; "
                                     f"give another --out, or move the store")
    for entry in sorted(out.glob("step-*")):
        ours = entry.is_dir() and not entry.is_symlink() and (entry / METADATA_FILE).is_file()
        if numbered(entry.name, "step-") is not None and not ours:
            what = "a file" if not entry.is_dir() or entry.is_symlink() else f"a folder without {METADATA_FILE}"
            raise FailtraceError(f"--out {out}: {entry.name} is {what}, not a checkpoint written by `failtrace "
                                 f"finetune`; saving would replace it. Give another --out, or move it away")


EARLIER_PREFIX = ".earlier-run-"  # OUT/.earlier-run-<time>-<hex>/step-N: an earlier run's, until a run finishes


def set_aside(out: Path) -> tuple[Path | None, list[str]]:
    """Move every ``step-N`` in ``out`` (an earlier run's, each vouched for by :func:`check_replaceable`) whole into a
    new ``out/.earlier-run-*`` folder, so a run starting from step 0 never mixes its steps with another run's even
    when it is stopped midway. Returns the folder (None: nothing to move) and the names moved."""
    import secrets
    import time

    check_replaceable(out)  # here too, at the moment of moving: only failtrace's own checkpoint folders move
    steps = sorted(f for f in out.glob("step-*") if numbered(f.name, "step-") is not None) if out.is_dir() else []
    if not steps:
        return None, []
    aside = out / f"{EARLIER_PREFIX}{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(4)}"
    aside.mkdir()
    for f in steps:
        os.replace(f, aside / f.name)
    return aside, [f.name for f in steps]


def drop_set_aside(out: Path) -> list[str]:
    """Remove every ``.earlier-run-*`` folder of ``out`` (a run into it has finished, so its checkpoints are that
    run's alone); returns the step names they held."""
    names: set[str] = set()
    for folder in out.glob(f"{EARLIER_PREFIX}*"):
        if folder.is_dir() and not folder.is_symlink():
            names |= {f.name for f in folder.glob("step-*")}
            shutil.rmtree(folder)
    return sorted(names, key=lambda n: numbered(n, "step-") or 0)


def save_checkpoint(model: Any, tokenizer: Any, out: str | Path, step: int, meta: dict[str, Any],
                    use_cache: bool | None = None) -> Path:
    """Write ``out/step-<step>/`` (weights in safetensors, tokenizer, metadata) atomically; returns the folder.
    ``use_cache``: the base model's setting, saved in the config in place of the one trl trains with (off)."""
    from failtrace.models.loading import _quiet_transformers
    from failtrace.models.portable import portable_tokenizer_config

    out = Path(out)
    check_replaceable(out)
    out.mkdir(parents=True, exist_ok=True)
    target = step_folder(out, step)
    tmp = owned_tempdir(out, ".step-")  # .step-<pid>-<place>-*: removed by the next save (tempdirs)
    tmp.chmod(0o777 & ~_umask())  # mkdtemp makes it private (0700); a checkpoint is an ordinary folder
    try:
        config = getattr(model, "config", None)
        training = getattr(config, "use_cache", None)
        with _quiet_transformers():  # no per-shard progress bars
            if use_cache is not None and training is not None:  # a checkpoint generates as the base model did
                config.use_cache = use_cache
            try:
                model.save_pretrained(tmp, safe_serialization=True)
            finally:
                if use_cache is not None and training is not None:
                    config.use_cache = training
            tokenizer.save_pretrained(tmp)
        portable_tokenizer_config(tmp)
        for f in tmp.iterdir():  # safetensors writes the weights 0600: others on the machine could not load them
            if f.is_file():
                f.chmod(0o666 & ~_umask())
        record = {"format": FORMAT, **meta, "step": int(step)}
        (tmp / METADATA_FILE).write_text(json.dumps(record, indent=2, sort_keys=True), encoding="utf-8")
        if target.exists():  # an older run's folder: move it aside first, so the rename below is atomic
            old = owned_tempdir(out, ".old-step-")
            os.replace(target, old / "x")
            shutil.rmtree(old, ignore_errors=True)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def vocab_digest(tokenizer: Any) -> str:
    """SHA-256 of the tokenizer's token → id map: equal digests mean every id names the same token."""
    import hashlib

    return hashlib.sha256(json.dumps(sorted(tokenizer.get_vocab().items())).encode()).hexdigest()


RUN_KEYS = ("method", "settings", "base_model_fingerprint", "base_vocab_digest", "trained_case_ids",
            "held_out_case_ids")  # what makes two checkpoints steps of one finetune run


def training_run_id(meta: dict[str, Any]) -> str:
    """The finetune run a checkpoint belongs to (16 hex characters): a hash of its method, settings, base model and
    case split, the same for every step of a run wherever its folder lies, different for another run's steps
    written into the same folder."""
    from failtrace.store.records import run_id_of

    return run_id_of({k: meta.get(k) for k in RUN_KEYS})


def check_weights(folder: str | Path) -> None:
    """A checkpoint's safetensors files open whole (safetensors checks that its header covers the file), so a cut
    one fails before ``compare`` writes a row for any other folder, not when its turn to load comes."""
    from safetensors import safe_open

    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        raise FailtraceError(f"checkpoint {folder} has no *.safetensors weights; the checkpoint is damaged")
    for path in files:
        try:
            with safe_open(str(path), framework="pt"):
                pass
        except Exception as exc:  # noqa: BLE001 - SafetensorError, OSError: the file cannot be read whole
            said = (str(exc).splitlines() or [type(exc).__name__])[0][:160]
            raise FailtraceError(f"checkpoint {folder}: {path.name} cannot be read ({said}); the checkpoint is "
                                 "damaged (a copy or save cut short?)") from None


def read_metadata(folder: str | Path) -> dict[str, Any]:
    """The metadata of a checkpoint folder; FailtraceError naming the folder when it is not a failtrace checkpoint."""
    folder = Path(folder)
    path = folder / METADATA_FILE
    if not folder.is_dir():
        raise FailtraceError(f"checkpoint {folder} is not a folder; give folders written by `failtrace finetune` "
                             f"(e.g. ckpts/step-0)")
    if not path.is_file():
        raise FailtraceError(f"{folder} has no {METADATA_FILE}: not a checkpoint written by `failtrace finetune` "
                             f"(use --models for other model folders)")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise FailtraceError(f"{path} is not valid JSON ({exc}); the checkpoint is damaged") from None
    need = ("method", "step", "base_model_fingerprint", "trained_case_ids", "held_out_case_ids")
    if not isinstance(meta, dict):
        raise FailtraceError(f"{path} is not a JSON object; the checkpoint is damaged or from another tool")
    if missing := [k for k in need if k not in meta]:  # name only what is missing
        raise FailtraceError(f"{path} lacks {', '.join(missing)}; the checkpoint is damaged or from another tool")
    step = meta["step"]
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise FailtraceError(f"{path}: step {step!r} is not a whole number ≥ 0; the checkpoint is damaged")
    for key in ("trained_case_ids", "held_out_case_ids"):
        if not isinstance(meta[key], list) or not all(isinstance(c, str) for c in meta[key]):
            raise FailtraceError(f"{path}: {key} is not a list of case ids; the checkpoint is damaged")
    for key in ("trained_pairs", "held_out_pairs"):  # absent from checkpoints written before runs recorded them
        value = meta.get(key, [])
        pairs = isinstance(value, list) and all(isinstance(p, list) and len(p) == 2 for p in value)
        if not pairs or not all(isinstance(x, str) for p in value for x in p):
            raise FailtraceError(f"{path}: {key} is not a list of [pair run id, item id]; the checkpoint is damaged")
    return meta


def case_splits(meta: dict[str, Any], pairs: Mapping[str, tuple[str, str]] | None = None) -> dict[str, str]:
    """Case id -> ``trained`` / ``held-out`` in the checkpoint's run (trained wins, as listed first); built once per
    run by callers that look many cases up.

    ``pairs`` (case id -> (pair run id, item id)) also places a case the run never listed whose *pair* it trained on
    or held out (the case analysed again after the run: the same prompt, target and contrast, so the same example).
    Checkpoints written before runs recorded their pairs lack them; their unlisted cases stay in neither split."""
    out = {**{c: "held-out" for c in meta["held_out_case_ids"]}, **{c: "trained" for c in meta["trained_case_ids"]}}
    by_pair = {**{tuple(p): "held-out" for p in meta.get("held_out_pairs") or []},
               **{tuple(p): "trained" for p in meta.get("trained_pairs") or []}}
    for case, pair in (pairs or {}).items():
        if case not in out and tuple(pair) in by_pair:
            out[case] = by_pair[tuple(pair)]
    return out


def split_of(meta: dict[str, Any], case_id: str, pair: tuple[str, str] | None = None) -> str | None:
    """``trained`` / ``held-out`` for a case of the checkpoint's run (by its id, else by its ``pair``: see
    :func:`case_splits`), None for a case it never saw in either role."""
    return case_splits(meta, {case_id: pair} if pair else None).get(case_id)


def make_save_callback(tokenizer: Any, out: str | Path, every: int, meta: dict[str, Any],
                       saved: list[Path], use_cache: bool | None = None) -> Any:
    """A transformers ``TrainerCallback`` that saves a checkpoint every ``every`` optimiser steps (appends the folders
    to ``saved``), with ``meta['loss_history']`` = the training losses logged so far. It saves on the step's log
    event (the trainer must log every step), which comes after the step's loss is in ``state.log_history``."""
    from transformers import TrainerCallback

    class SaveEvery(TrainerCallback):  # type: ignore[misc]
        pending = False

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> Any:
            self.pending = state.global_step % every == 0
            return control

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, model: Any = None,
                   **kw: Any) -> Any:
            if self.pending and model is not None and "loss" in (logs or {}):
                self.pending = False
                history = [{"step": h["step"], "loss": h["loss"]} for h in state.log_history if "loss" in h]
                saved.append(save_checkpoint(model, tokenizer, out, state.global_step,
                                             meta | {"loss_history": history}, use_cache))
            return control

    return SaveEvery()
