"""Where an interrupted ``failtrace finetune`` continues from: ``OUT/.resume/``.

The folder holds the run's identity (``identity.json``: method, settings, base model fingerprint and vocabulary,
the trained / held-out split, library versions) and transformers' own newest trainer checkpoint (``checkpoint-N``:
weights, optimiser, scheduler, RNG and trainer state). transformers writes and rotates the checkpoints; this module
only decides whether a rerun may continue from one: the identity must be equal, N a saved step (a multiple of
``save_every``, or the last step) and failtrace's own ``step-K`` folders of this run up to N must all be there (the
last step's is written after training: a rerun from there trains nothing and writes it), else the run starts again
from step 0.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

RESUME_DIR = ".resume"
IDENTITY_FILE = "identity.json"
_NEEDED = ("trainer_state.json", "optimizer.pt", "scheduler.pt")  # what transformers reads to continue exactly
# and the weights, in one of the forms transformers' Trainer loads a checkpoint from (else "Can't find a valid
# checkpoint", a crash on every rerun)
_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json",
            "adapter_model.safetensors", "adapter_model.bin")


def _whole(checkpoint: Path) -> bool:
    """Every file transformers reads to continue is there and not empty (a kill while the folder was written, or
    while it was removed, leaves some missing or empty)."""
    def nonempty(name: str) -> bool:
        f = checkpoint / name
        return f.is_file() and f.stat().st_size > 0

    return all(nonempty(f) for f in _NEEDED) and any(nonempty(f) for f in _WEIGHTS)


def _interrupted_run(out: str | Path, identity: dict[str, Any]) -> bool:
    """Whether ``OUT/.resume/`` holds the state of an interrupted run with this ``identity``."""
    try:
        stored = json.loads((Path(out) / RESUME_DIR / IDENTITY_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return bool(stored == json.loads(json.dumps(identity)))  # compared as JSON (tuples are lists there)


def resume_point(out: str | Path, identity: dict[str, Any]) -> tuple[Path | None, int | None]:
    """The newest trainer checkpoint of an interrupted run with this ``identity`` and its step, or (None, None)."""
    from failtrace.training.checkpoints import numbered, step_folder, training_run_id

    folder = Path(out) / RESUME_DIR
    if not _interrupted_run(out, identity):
        return None, None
    mine = training_run_id(identity)
    every, last = int(identity["settings"]["save_every"]), int(identity["settings"]["steps"])
    steps = sorted((n, p) for p in folder.glob("checkpoint-*") if (n := numbered(p.name, "checkpoint-")) is not None
                   and _whole(p))
    for step, path in reversed(steps):  # the newest whole one: a run killed while saving leaves the older too
        # the trainer saves every `every` steps and at the last step; failtrace's step folder of the last step is
        # written after training, so up to the last multiple of `every` only (the rerun writes the last one)
        ours = [step_folder(out, k) for k in range(0, step + 1, every)]
        if (step % every == 0 or step == last) and all(_is_step_of(f, mine) for f in ours) \
                and _state_step(path) == step:
            return path, step
    return None, None


def _is_step_of(folder: Path, run_id: str) -> bool:
    """Whether ``folder`` is a step folder of the run ``run_id`` (:func:`~failtrace.training.checkpoints.
    training_run_id`): another run killed after writing its step-0, before it replaced the resume state, leaves its
    own beside this run's."""
    from failtrace.errors import FailtraceError
    from failtrace.training.checkpoints import read_metadata, training_run_id

    try:
        return training_run_id(read_metadata(folder)) == run_id
    except FailtraceError:  # missing, damaged or not a failtrace checkpoint
        return False


def unresumable_step(out: str | Path, identity: dict[str, Any]) -> int | None:
    """The newest step (> 0) an interrupted run with this ``identity`` saved as a step folder of its own, when
    :func:`resume_point` found nothing to resume it from (e.g. interrupted in the seconds between the step folder
    and the trainer's own checkpoint): the rerun trains from step 0 again, and says so. Another run's step folders
    left in ``out`` do not count; its own set aside by another run's start (``.earlier-run-*``) do. None otherwise."""
    from failtrace.training.checkpoints import EARLIER_PREFIX, numbered, training_run_id

    if not _interrupted_run(out, identity):
        return None
    mine = training_run_id(identity)
    folders = [*Path(out).glob("step-*"), *Path(out).glob(f"{EARLIER_PREFIX}*/step-*")]
    steps = [n for p in folders if (n := numbered(p.name, "step-")) is not None and n > 0 and _is_step_of(p, mine)]
    return max(steps, default=None)


def _state_step(checkpoint: Path) -> int | None:
    """The step in the checkpoint's trainer_state.json (written last), None when it is cut short or unreadable."""
    try:
        step = json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8")).get("global_step")
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        return None
    return step if isinstance(step, int) and not isinstance(step, bool) else None


def start_resume(out: str | Path, identity: dict[str, Any]) -> None:
    """A fresh ``OUT/.resume/`` holding only ``identity`` (an older run's state is removed)."""
    folder = Path(out) / RESUME_DIR
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    fd, tmp = tempfile.mkstemp(prefix=".identity-", dir=folder)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(identity, fh, indent=2, sort_keys=True)
    os.replace(tmp, folder / IDENTITY_FILE)


def check_resume_dir(out: str | Path) -> None:
    """Refuse an ``OUT/.resume`` that finetune did not write (no identity file): finetune replaces that folder."""
    from failtrace.errors import FailtraceError

    state = Path(out).expanduser() / RESUME_DIR
    if state.is_symlink() or state.exists() and not (state.is_dir() and (
            (state / IDENTITY_FILE).is_file() or not any(state.iterdir()))):
        raise FailtraceError(f"--out {out}: {RESUME_DIR} is not finetune's resume state (no {IDENTITY_FILE}); "
                             f"finetune replaces that folder. Give another --out, or move it away")


def finish_resume(out: str | Path) -> None:
    """A finished run needs no resume state: remove it (it holds the optimiser, twice the model's size)."""
    shutil.rmtree(Path(out) / RESUME_DIR, ignore_errors=True)
