"""Attribution methods by name: each turns (model, ids, objective) into relevance per (layer, token).

A method is a function ``fn(model, ids, objective, **options) -> MethodResult`` registered under a name; options it
does not use it ignores (``ig_steps``, ``use_checkpoint``, ``seed`` today; ``with_value=False``: the caller
needs only the relevance, so a method that would spend a pass on the objective's value may return NaN).
Registering is one line::

    register_method("attention", "failtrace.attribution.attention:attention_method")   # lazy: "module:function"
    register_method("mine", my_function)                                                  # or the function itself

A lazy entry is imported on first use, so the registry never imports the methods' modules (no import circles) and
``failtrace attribute --method NAME`` and ``failtrace analyse --methods`` offer every registered name: this
registry is the one list of methods (an analysis's default six are a choice among them,
:mod:`failtrace.cases.settings`). The three LRP methods come from the rule table
:data:`failtrace.lrp.methods.LRP_METHODS`; integrated gradients is in :mod:`failtrace.attribution.baselines`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from importlib import import_module
from typing import Any, Callable

import numpy as np
import torch

from failtrace.errors import FailtraceError
from failtrace.lrp.methods import LRP_METHODS


@dataclass
class MethodResult:
    """``relevance[0]`` is the input (embedding) relevance; further rows, if any, each decoder layer's output."""

    relevance: np.ndarray  # float64 [rows, n]
    value: float  # the objective at the real input
    logits: torch.Tensor  # [vocab] at the explained position
    extra: dict[str, Any] = field(default_factory=dict)


MethodFn = Callable[..., MethodResult]
ATTRIBUTION_METHODS: dict[str, MethodFn | str] = {}


def register_method(name: str, fn: MethodFn | str) -> None:
    """Make ``fn`` (a function, or ``"module:function"`` imported on first use) available as ``method=name``. Names
    are lower case, as the commands read them (``--method IG`` is ``ig``)."""
    if not isinstance(name, str) or not name or name != name.strip().lower() or "," in name:
        raise FailtraceError(f"a method name is lower case, without spaces or commas: got {name!r}")
    ATTRIBUTION_METHODS[name] = fn


def get_method(name: str) -> MethodFn:
    """The function registered as ``name`` (a :class:`FailtraceError` listing the valid names otherwise)."""
    if name not in ATTRIBUTION_METHODS:
        raise FailtraceError(f"unknown method {name!r}; valid: {', '.join(ATTRIBUTION_METHODS)}")
    fn = ATTRIBUTION_METHODS[name]
    if isinstance(fn, str):
        module, _, attr = fn.partition(":")
        fn = getattr(import_module(module), attr)
        ATTRIBUTION_METHODS[name] = fn
    return fn


def lrp_method_pass(model: torch.nn.Module, ids: list[int], objective: Callable[[torch.Tensor], torch.Tensor], *,
                    rule: str, use_checkpoint: bool | None = None, **_: Any) -> MethodResult:
    """One forward + one modified backward under the LRP method ``rule``: relevance of every hidden state."""
    from failtrace.attribution.engine import relevance_pass

    res = relevance_pass(model, ids, objective, method=rule, use_checkpoint=use_checkpoint)
    return MethodResult(res.relevance().cpu().numpy(), res.value, res.logits)


for _rule in LRP_METHODS:
    register_method(_rule, partial(lrp_method_pass, rule=_rule))
register_method("ig", "failtrace.attribution.baselines:ig_method")
register_method("attention", "failtrace.attribution.attention:attention_method")
register_method("random", "failtrace.attribution.attention:random_method")
# what a fresh interpreter knows (a Ray worker): a method registered later exists only in the process that did it
BUILT_IN_METHODS: tuple[str, ...] = tuple(ATTRIBUTION_METHODS)
