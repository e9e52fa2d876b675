"""``failtrace attribute``: one contrastive attribution, written as JSON, HTML and PNG (``demo`` is in cli/demo.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from failtrace.cli import options as opts
from failtrace.cli.checks import check_outputs
from failtrace.errors import FailtraceError


def _outputs(attr: object, json_path: Optional[Path], html_path: Optional[Path], png_path: Optional[Path]) -> list[str]:
    from failtrace.views import heatmap_html, save_heatmap_png

    written = []
    if json_path:
        attr.save_json(json_path)  # type: ignore[attr-defined]
        written.append(str(json_path))
    if html_path:
        html_path.parent.mkdir(parents=True, exist_ok=True)
        html_path.write_text(heatmap_html(attr), encoding="utf-8")  # type: ignore[arg-type]
        written.append(str(html_path))
    if png_path:
        save_heatmap_png(attr, png_path)  # type: ignore[arg-type]
        written.append(str(png_path))
    return written


def _validate(prompt: str, method: str, objective: str, dtype: str, json_path: Optional[Path],
              html_path: Optional[Path], png_path: Optional[Path], ig_steps: int | None = None) -> None:
    """Everything that can be checked without the model, checked before loading it."""
    from failtrace.attribution.baselines import check_ig_steps
    from failtrace.attribution.methods import get_method
    from failtrace.attribution.objective import check_objective
    from failtrace.models.loading import check_dtype

    if not prompt or not prompt.strip():
        raise FailtraceError("the prompt is empty; pass --prompt TEXT")
    get_method(method)
    if ig_steps is not None:  # IG's alone: elsewhere it would be accepted and silently do nothing
        if method != "ig":
            raise FailtraceError(f"--ig-steps sets integrated gradients' steps, which --method {method} does not "
                                 f"use; drop it, or add --method ig")
        check_ig_steps(ig_steps)
    check_objective(objective)
    check_dtype(dtype)
    check_outputs((json_path, "--json", "attribution.json"), (html_path, "--html", "attribution.html"),
                  (png_path, "--png", "attribution.png"), pictures_by_suffix=True)  # PNG bytes need a .png name


def run_attribute(
    model: str | None, prompt: str | None, target: str | None, contrast: str | None, chat: bool,
    answer_prefix: str | None, method: str, objective: str, position: int | None, json_path: Optional[Path],
    html_path: Optional[Path], png_path: Optional[Path], dtype: str | None, ig_steps: int | None, quiet: bool,
    allow_long: bool = False, store: Optional[Path] = None, case: str | None = None,
) -> None:
    """The ``attribute`` command: check every input before the model loads, then explain one prompt (or a stored
    case's exact input) and write the views."""
    from rich.console import Console

    from failtrace.cli import from_case

    from_case.check_case_options(store, case, from_case.hand_options(prompt, target, contrast, chat, answer_prefix,
                                                                      position))
    _validate(prompt if case is None else "stored", method, objective, dtype or "float32", json_path, html_path,
              png_path, ig_steps)
    stored = from_case.read_stored_case(store, case) if case is not None and store is not None else None
    import failtrace
    from failtrace.attribution.baselines import IG_STEPS
    from failtrace.views import render_terminal

    console = Console(stderr=True, soft_wrap=True)  # a note or the Δℓ check is one line, even when piped

    def note(msg: str) -> None:
        console.print(f"note: {msg}", highlight=False, markup=False)

    if stored is None:
        lm = failtrace.load_model(model, dtype=dtype or "float32")
        text: Any = prompt
        ig_steps = ig_steps or IG_STEPS  # a stored case uses its analysis's steps instead
        seed = 0
    else:
        lm = from_case.load_case_model(stored, model, dtype, note)
        text, answer_prefix, target, contrast = from_case.case_input(stored, objective)
        ig_steps = ig_steps or int(stored.setting("ig_steps"))  # the analysis's, so IG reproduces
        seed = from_case.random_seed_of(stored)  # and the random baseline's order
    with console.status(f"attributing with {method} ..."):
        attr = failtrace.attribute(
            lm, text, target=target, contrast=contrast,
            answer_prefix=answer_prefix, chat=chat, method=method, objective=objective, position=position,
            ig_steps=ig_steps, seed=seed, allow_long=allow_long,
        )
    if stored is not None:  # where the ids came from (collect rendered them with the chat template)
        attr.extra["case"] = from_case.provenance(stored)
    if not quiet:
        render_terminal(attr)
    if stored is not None:  # a result, on stdout beside the terminal view (so `> file` keeps it)
        print(from_case.delta_check(stored, attr.delta_logit, objective), flush=True)
    if png_path is not None:  # the checked (possibly missing) folder is created only now, when there is output
        png_path.parent.mkdir(parents=True, exist_ok=True)
    for path in _outputs(attr, json_path, html_path, png_path):
        console.print(f"wrote {path}")


def register(app: typer.Typer) -> None:
    """Add the ``attribute`` command to the typer app."""
    @app.command("attribute")
    def attribute_cmd(
        prompt: Optional[str] = opts.PROMPT,
        target: Optional[str] = opts.TARGET,
        contrast: Optional[str] = opts.CONTRAST,
        model: Optional[str] = opts.MODEL,
        chat: bool = opts.CHAT,
        answer_prefix: Optional[str] = opts.ANSWER_PREFIX,
        method: str = typer.Option("attnlrp", "--method", help="attnlrp | cp-lrp | gradxinput | ig | attention | "
                                                               "random (any registered method)."),
        objective: str = typer.Option("logit_diff", "--objective",
                                      help="logit_diff | max_logit | topk_mean | vocab_mean"),
        position: Optional[int] = opts.POSITION,
        json_path: Optional[Path] = typer.Option(None, "--json", help="Write the record as JSON."),
        html_path: Optional[Path] = typer.Option(None, "--html", help="Write a self-contained HTML heatmap."),
        png_path: Optional[Path] = typer.Option(None, "--png", help="Write a PNG heatmap."),
        dtype: Optional[str] = opts.DTYPE,
        ig_steps: Optional[int] = typer.Option(None, "--ig-steps", callback=opts.count(1),
                                               help="Integrated-gradients steps (method ig), at least 1; default 32 "
                                               "(analyse uses 16 per case, half the cost; with --case, the case's "
                                               "own)."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="Do not print the terminal view."),
        allow_long: bool = opts.ALLOW_LONG,
        store: Optional[Path] = opts.CASE_STORE,
        case: Optional[str] = opts.STORED_CASE,
    ) -> None:
        """Explain why the model prefers TARGET over CONTRAST as its next token (or a stored case again: --store S
        --case ID)."""
        run_attribute(model, prompt, target, contrast, chat, answer_prefix, method, objective, position, json_path,
                      html_path, png_path, dtype, ig_steps, quiet, allow_long, store, case)
