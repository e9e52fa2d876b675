"""Options shared by the commands, and the checks that reject bad values while the command line is parsed (empty
values on the raw command line; numbers in typer callbacks).

The checks are typer callbacks: a bad value ends the command before any file is opened or model loaded, with
``error: Invalid value for '--ig-steps': ...`` naming the option, the value and what would be valid.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import typer

from failtrace.errors import FailtraceError

Check = Callable[..., Any]


# Options whose empty value means something (no answer prefix, an empty title); every other one's is refused.
EMPTY_ALLOWED = frozenset({"--answer-prefix", "--title"})


def refuse_empty_values(command: Any, argv: list[str]) -> None:
    """Refuse ``--option ""`` (or ``--option=``) for any option of the invoked sub-command that takes a value, an
    option whose value is the name of another of its options (``--item --store x``: the value was forgotten), and an
    option of one value given twice (click keeps the last).

    An empty string is never a useful model, store, path or layer range, and typer would silently turn it into a
    default (``Path("")`` is ``.``, the current folder); this runs on the raw command line, before typer converts.
    ``command`` is the click group built from the app.
    """
    sub = getattr(command, "commands", {}).get(argv[0]) if argv else None
    if sub is None:
        return
    takes_value = {name for p in sub.params if getattr(p, "opts", None) and not getattr(p, "is_flag", False)
                   and getattr(p, "param_type_name", "") == "option" for name in p.opts + p.secondary_opts}
    # every option name of the command: one given as another option's value (`--item --store s.duckdb`) is a
    # missing value, which click reported as "unexpected extra argument (s.duckdb)"
    names = {name for p in sub.params if getattr(p, "param_type_name", "") == "option"
             for name in p.opts + p.secondary_opts}
    # an option that takes one value, given twice (`--store a --store b`): click keeps the last without a word
    single = {name: max(p.opts, key=len) for p in sub.params if getattr(p, "param_type_name", "") == "option"
              and not getattr(p, "is_flag", False) and not getattr(p, "multiple", False) for name in p.opts}
    seen: set[str] = set()
    i = 1
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            return
        name, eq, value = arg.partition("=")
        if name in single:
            if single[name] in seen:
                raise FailtraceError(f"{single[name]} is given twice; give it once; see 'failtrace {argv[0]} "
                                     f"--help'")
            seen.add(single[name])
        if not eq and arg in takes_value:  # the next word is this option's value (whatever it looks like)
            name, value, i = arg, (argv[i + 1] if i + 1 < len(argv) else None), i + 1
        if name in takes_value and name not in EMPTY_ALLOWED and value == "":
            raise FailtraceError(f"{name} is empty; give a value; see 'failtrace {argv[0]} --help'")
        if name in takes_value and not eq and value in names:
            raise FailtraceError(f"{name} has no value: the next word is the option {value}; give {name} its "
                                 f"value first; see 'failtrace {argv[0]} --help'")
        i += 1


def _bad(value: Any, valid: str) -> typer.BadParameter:
    return typer.BadParameter(f"got {value!r}; {valid}")


def count(minimum: int = 1, maximum: int | None = None) -> Check:
    """A whole number of at least ``minimum`` (and at most ``maximum``; None passes: the option was not given)."""

    def check(value: int | None) -> int | None:
        if value is not None and (value < minimum or (maximum is not None and value > maximum)):
            raise _bad(value, f"give a whole number of at least {minimum}"
                       + (f" and at most {maximum}" if maximum is not None else ""))
        return value

    return check


def finite(minimum: float | None = None, maximum: float | None = None, *, open_min: bool = False) -> Check:
    """A finite float (NaN and ±inf are refused) inside ``[minimum, maximum]`` (``(minimum, ...`` if ``open_min``)."""

    def check(value: float | None) -> float | None:
        if value is None:
            return value
        low = "" if minimum is None else (f"> {minimum:g}" if open_min else f">= {minimum:g}")
        high = "" if maximum is None else f"<= {maximum:g}"
        valid = "give a finite number" + (f" {low}" if low else "") + (" and" if low and high else "") + \
            (f" {high}" if high else "")
        if not math.isfinite(value):
            raise _bad(value, valid)
        if minimum is not None and (value <= minimum if open_min else value < minimum):
            raise _bad(value, valid)
        if maximum is not None and value > maximum:
            raise _bad(value, valid)
        return value

    return check


def one_of(choices: tuple[str, ...] | Callable[[], tuple[str, ...]], *, lower: bool = False) -> Check:
    """One of ``choices`` (or of what a function returns, so the list lives next to the code that uses it)."""

    def check(value: str | None) -> str | None:
        if value is None:
            return value
        valid = choices() if callable(choices) else choices
        key = value.lower() if lower else value
        if key not in valid:
            shown = ", ".join(valid[:-1]) + (" or " if len(valid) > 1 else "") + valid[-1]
            raise _bad(value, f"use {shown}")
        return value

    return check


def stripped(value: Any) -> Any:
    """An id option (``--item``, one value or a list) without surrounding spaces, as ``--case`` is read: a pasted
    ``" HumanEval/10"`` named no item. Only spaces is refused, as an empty value is."""
    if value is None:
        return value
    out = [v.strip() for v in ([value] if isinstance(value, str) else value)]
    if any(not v for v in out):
        raise typer.BadParameter("got only spaces; give an item id")
    return out[0] if isinstance(value, str) else out


PROMPT = typer.Option(None, "--prompt", "-p", help="Prompt text (or the user message with --chat); or use --case.")
TARGET = typer.Option(None, "--target", "-t",
                      help="Target (wrong) token: one-token string or '#ID'. Default: the model's own next token.")
CONTRAST = typer.Option(None, "--contrast", "-c", help="Contrast (right) token: one-token string or '#ID'.")
MODEL_HELP = "Registry name (failtrace models), .gguf file, local folder, hub id; default smollm2-135m-instruct."
MODEL = typer.Option(None, "--model", "-m", help=MODEL_HELP)
CHAT = typer.Option(False, "--chat", help="Wrap the prompt in the model's chat template.")
ANSWER_PREFIX = typer.Option(None, "--answer-prefix", help="The model's own output before the explained token.")
POSITION = typer.Option(None, "--position", help="Explain the prediction after this token index (default last; "
                                                  "negative counts from the end, -1 = last).")
ALLOW_LONG = typer.Option(False, "--allow-long",
                          help="Run an input longer than the model's context window (refused by default: the model "
                               "never saw such positions, and time and memory grow with the length).")

DTYPES = ("float32", "bfloat16", "float16", "fp32", "bf16", "fp16")
DTYPE = typer.Option(None, "--dtype", help="float32 | bfloat16 | float16 (default float32; with --case, the dtype of "
                                           "the case's run).")
# A stored case as the input of attribute and graph (cli/from_case.py).
CASE_STORE = typer.Option(None, "--store", "-s", help="Results store holding the --case to explain again.",
                          rich_help_panel="A stored case instead of a prompt")
STORED_CASE = typer.Option(None, "--case",
                           help="Explain this stored case (an id or a unique prefix) again: its exact tokens, "
                                "target and contrast, on its run's model unless --model is given.",
                           rich_help_panel="A stored case instead of a prompt")
WORKERS = typer.Option(None, "--workers", callback=count(1),
                       help="Run on N Ray workers, one model each (needs the ray extra; starts a local cluster "
                            "unless --ray-address is given). Without it everything runs in this process.")
RAY_ADDRESS = typer.Option(None, "--ray-address",
                           help="Join this Ray cluster (e.g. auto) instead of starting a local one; with --workers.")


def check_scale(workers: int | None, ray_address: str | None, batch_size: int = 1) -> None:
    """--workers needs Ray; --ray-address needs --workers; batched decoding stays in-process."""
    if workers is None:
        if ray_address is not None:
            raise FailtraceError("--ray-address needs --workers N (without --workers everything runs in-process)")
        return
    if batch_size != 1:
        raise FailtraceError("--batch-size > 1 is not supported with --workers (each worker decodes one item at a "
                             "time); drop one of them")
    from failtrace.scale.pool import check_local_workers, require_ray

    if ray_address is None:  # refused before any model loads; ensure_ray checks the same for the Python API
        check_local_workers(workers)
    require_ray()


def check_limit_items(limit: int | None, items: list[str] | None) -> None:
    """``--limit`` below the number of ``--item`` ids would drop named items silently: refused."""
    if items and limit is not None and limit < len(set(items)):
        raise FailtraceError(f"--limit {limit} would drop some of the {len(set(items))} --item ids; give fewer "
                             "--item ids or leave --limit out")


def on_workers(workers: int | None) -> str:
    """`` on 1 Ray worker`` / `` on 4 Ray workers`` for a command's closing line; empty when it ran here."""
    if not workers:
        return ""
    return f" on {workers} Ray worker{'' if workers == 1 else 's'}"
