"""``failtrace finetune``: post-train the bundled (or another) model on a store's clean cases; write checkpoints.

``--method sft`` imitates the recovered completions, ``dpo`` prefers them over the failed ones, ``token-dpo`` does
the same with per-token weights on the log-ratios: 1 on the decision token, ``--tail-weight`` after it (the answer
prefix's attribution weights cancel, since chosen and rejected share it; docs/MODELS.md). A seeded share of the
cases is held out; ``OUT/step-N/`` folders load with ``AutoModelForCausalLM.from_pretrained`` and are compared with
``failtrace compare --checkpoints``. An interrupted run resumes when the same command is run again
(``OUT/.resume/``, :mod:`failtrace.training.resume`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from failtrace.cli import options as opts
from failtrace.cli.console import count_of
from failtrace.store.store import DEFAULT_STORE
from failtrace.training.finetune import METHODS

MAX_STEPS = 1_000_000  # far beyond any run here; a typo like 99999999999999999999 trained until killed


def finetune_command(
    store: Path = typer.Option(Path(DEFAULT_STORE), "--store", "-s", help="Results store with analysed cases."),
    method: str = typer.Option(..., "--method", help="sft, dpo or token-dpo.", callback=opts.one_of(METHODS)),
    steps: int = typer.Option(200, "--steps", help="Optimiser steps (1 to 1,000,000).",
                              callback=opts.count(1, MAX_STEPS)),
    save_every: int = typer.Option(50, "--save-every", help="Save a checkpoint every N steps (and step 0, the end).",
                                   callback=opts.count(1, MAX_STEPS)),
    out: Path = typer.Option(Path("ckpts"), "--out", "-o", help="Folder for the step-N checkpoint folders."),
    held_out: float = typer.Option(0.3, "--held-out", help="Share of cases held out (seeded), in [0, 0.99].",
                                   callback=opts.finite(0.0, 0.99)),
    seed: int = typer.Option(0, "--seed", help="Seed of the held-out split and of training.",
                             callback=opts.count(0, 2**31 - 1)),
    lr: float = typer.Option(1e-5, "--lr", help="Learning rate (constant).", callback=opts.finite(0.0, 1.0,
                                                                                                 open_min=True)),
    beta: float = typer.Option(0.1, "--beta", help="DPO β (dpo and token-dpo), in (0, 1000].",
                               callback=opts.finite(0.0, open_min=True)),
    tail_weight: float = typer.Option(0.0, "--tail-weight",
                                      help="token-dpo: weight of the tokens after the decision token (0..1).",
                                      callback=opts.finite(0.0, 1.0)),
    batch_size: int = typer.Option(1, "--batch-size", help="Examples (pairs) per step.", callback=opts.count(1)),
    benchmark: Optional[str] = typer.Option(None, "--benchmark", "-b", help="Only cases of this benchmark."),
    model: Optional[str] = opts.MODEL,
    resume_state: bool = typer.Option(True, "--resume-state/--no-resume-state",
                                      help="Keep the trainer's state (about 3x the weights) in OUT/.resume at each "
                                           "saved step, so that the same command resumes an interrupted run."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show trl's progress bar."),
) -> None:
    """Post-train the model on its clean cases with trl (CPU) and save checkpoints at step 0, every N steps, the end."""
    from failtrace.cli.checks import check_output_dir, check_store_path
    from failtrace.models.loading import load_model
    from failtrace.store.cases import require_cases
    from failtrace.store.store import open_store
    from failtrace.training.checkpoints import check_replaceable
    from failtrace.training.resume import check_resume_dir
    from failtrace.training.finetune import FinetuneSettings, finetune, require_trl, training_data

    settings = FinetuneSettings(method=method, steps=steps, save_every=save_every, held_out=held_out, seed=seed,
                                lr=lr, beta=beta, tail_weight=tail_weight, batch_size=batch_size, benchmark=benchmark,
                                resume_state=resume_state)
    settings.check()
    require_trl()
    check_output_dir(out, "--out")
    check_replaceable(out, store)
    check_resume_dir(out)
    check_store_path(store, create=False)
    with open_store(store, read_only=True) as st:  # opened only to read: other commands may write the store
        require_cases(st, benchmark)                # (compare the checkpoints saved so far) while this one loads
    lm = load_model(model, progress=progress)       # the model (a conversion: minutes) and trains
    with open_store(store, read_only=True) as st:
        data = training_data(st, lm, settings)
    result = finetune(data, lm, out, settings, progress=progress,
                      on_note=lambda text: typer.echo(f"note: {text}", err=True))
    resumed = "" if result.resumed_from is None else f"; resumed from step {result.resumed_from}"
    left = f", {result.rejected} left out (a reviewer rejected the pair)" if result.rejected else ""
    typer.echo(f"{method}: {count_of(len(result.trained), 'case')} trained, {len(result.held_out)} held out{left}; "
               f"{count_of(len(result.checkpoints), 'checkpoint')} in {result.out} ({result.seconds:.0f} s{resumed})")
    shown = result.losses[:: max(1, len(result.losses) // 10)]
    for h in shown + [h for h in result.losses[-1:] if h not in shown]:  # about ten, and always the last
        typer.echo(f"  step {h['step']:>4}  loss {h['loss']:.4f}")
    for path in result.checkpoints:
        typer.echo(f"  {path}")
    if result.restarted_over is not None:
        typer.echo(f"note: the interrupted run saved step {result.restarted_over} but left no trainer state to resume "
                   "from beside its own step folders (interrupted while saving it, a step folder removed, or another "
                   "run's step folder in its place), so this run trained again from step 0; training is "
                   "deterministic: the checkpoints are the ones it would have written")
    if result.replaced:
        typer.echo(f"note: removed {', '.join(result.replaced)} of an earlier finetune run from {result.out}, so "
                   f"its checkpoints are this run's alone")


def register(app: typer.Typer) -> None:
    """Add ``finetune`` to the ``failtrace`` app."""
    app.command("finetune")(finetune_command)
