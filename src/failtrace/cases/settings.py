"""What an analysis computes per case: the methods, masking, graph and category settings (part of every case id)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from failtrace.attribution.methods import ATTRIBUTION_METHODS
from failtrace.cases.record import MASK_RULES, MaskingSpec
from failtrace.errors import FailtraceError

# The attribution methods an analysis compares per case unless told otherwise (docs/ANALYSES.md defines each). Any
# method of the registry (failtrace.attribution.methods) may be named; results list methods in the registry's order.
DEFAULT_METHODS: tuple[str, ...] = ("attnlrp", "cp-lrp", "gradxinput", "ig", "attention", "random")
MAX_K = 1000  # the masking search's deepest K: far past where any category is decided (K_IA = 5, K = 10)
# failure_pattern's thresholds a CaseSettings.pattern may set (docs/ANALYSES.md): θ, θ' and m
PATTERN_KEYS: tuple[str, ...] = ("theta", "theta_share", "m")


def case_methods() -> tuple[str, ...]:
    """Every method an analysis may compute: the attribution registry's names, in its order."""
    return tuple(ATTRIBUTION_METHODS)


def in_method_order(names: Iterable[str]) -> list[str]:
    """``names`` once each, the registry's methods in its order, then any others (a store written where another
    method was registered) by name: the one order of every view."""
    given, order = set(names), case_methods()
    return [m for m in order if m in given] + sorted(given.difference(order))


@dataclass
class CaseSettings:
    """Settings of one analysis. Everything here changes results, so all of it goes into the case id.

    ``methods``: attribution methods (attnlrp is required: graph, category and pattern use it). ``max_k``: masking
    search depth K. ``ig_steps``: integrated-gradients steps. ``mask_rule``/``mask_token_id``/``skip_template``:
    masking (see :class:`MaskingSpec`; ``skip_template`` also keeps node ablation off the template text).
    ``k_ia``: input attribution explains the failure when k* <= k_ia. ``ablation_budget``:
    hidden nodes ablated at most (None: the analysis' default). ``node_threshold``/``prune``/``edge_method``: the
    graph (see :mod:`failtrace.graph`). ``bands``: layer bands in the graph summary. ``seed``: the random
    baseline's seed. ``pattern``: keyword overrides for the failure-pattern thresholds (theta, theta_share, m).
    """

    methods: tuple[str, ...] = DEFAULT_METHODS
    max_k: int = 10
    ig_steps: int = 16
    mask_rule: str = "zero-embedding"
    mask_token_id: int | None = None
    skip_template: bool = True
    k_ia: int = 5
    ablation_budget: int | None = None
    node_threshold: float = 0.01
    prune: str = "cumulative:0.85"
    edge_method: str = "auto"
    bands: int = 3
    seed: int = 0
    pattern: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.methods = tuple(self.methods)

    @classmethod
    def parse_methods(cls, text: str | None) -> tuple[str, ...]:
        """``"attnlrp,ig"`` -> methods in the registry's order; ``None``/``"all"`` -> the default six."""
        if text is None or text.strip().lower() == "all":
            return DEFAULT_METHODS  # an empty --methods '' is refused by validate(), not read as "all"
        names = [t.strip().lower() for t in text.replace(" ", ",").split(",") if t.strip()]
        known = case_methods()
        unknown = [n for n in names if n not in known]
        if unknown:
            raise FailtraceError(f"unknown method {unknown[0]!r}; valid: {', '.join(known)}")
        return tuple(m for m in known if m in names)

    def validate(self) -> CaseSettings:
        """Raise :class:`FailtraceError` (one line) on any bad value; returns self."""
        from failtrace.graph.settings import EDGE_ALGORITHMS
        from failtrace.graph.prune import PruneSpec, check_node_threshold

        if not self.methods:
            raise FailtraceError("--methods is empty; name at least attnlrp")
        known = case_methods()
        unknown = [m for m in self.methods if m not in known]
        if unknown:
            raise FailtraceError(f"unknown method {unknown[0]!r}; valid: {', '.join(known)}")
        if "attnlrp" not in self.methods:
            raise FailtraceError("--methods must include attnlrp: the graph, the category and the pattern use it")
        if len(set(self.methods)) != len(self.methods):
            raise FailtraceError(f"--methods names a method twice: {', '.join(self.methods)}")
        for name, value, low in (("--max-k", self.max_k, 1), ("--ig-steps", self.ig_steps, 1),
                                 ("k_ia", self.k_ia, 0), ("bands", self.bands, 1)):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise FailtraceError(f"{name} must be an integer >= {low}, got {value!r}")
        from failtrace.attribution.baselines import MAX_IG_STEPS

        if self.ig_steps > MAX_IG_STEPS:
            raise FailtraceError(f"--ig-steps must be at most {MAX_IG_STEPS}, got {self.ig_steps}")
        if self.max_k > MAX_K:
            raise FailtraceError(f"--max-k must be at most {MAX_K} (each k costs a forward pass per method), got "
                                 f"{self.max_k}")
        if self.ablation_budget is not None and (not isinstance(self.ablation_budget, int)
                                                 or self.ablation_budget < 1):
            raise FailtraceError(f"ablation budget must be a positive integer, got {self.ablation_budget!r}")
        if not isinstance(self.skip_template, bool):
            raise FailtraceError(f"skip_template must be true or false, got {self.skip_template!r}")
        if self.mask_rule not in MASK_RULES:
            raise FailtraceError(f"unknown mask rule {self.mask_rule!r}; valid: {', '.join(MASK_RULES)}")
        if self.mask_rule == "replace" and self.mask_token_id is None:
            raise FailtraceError("mask rule 'replace' needs --mask-token (the id that replaces masked tokens)")
        if self.mask_token_id is not None and (not isinstance(self.mask_token_id, int)
                                               or isinstance(self.mask_token_id, bool) or self.mask_token_id < 0):
            raise FailtraceError(f"--mask-token must be a token id >= 0, got {self.mask_token_id!r}")
        if self.mask_rule == "zero-embedding" and self.mask_token_id is not None:
            raise FailtraceError("--mask-token only applies to --mask-rule replace")
        if self.edge_method not in EDGE_ALGORITHMS:
            raise FailtraceError(f"unknown edge method {self.edge_method!r}; valid: {', '.join(EDGE_ALGORITHMS)}")
        check_node_threshold(self.node_threshold)
        self.prune = str(PruneSpec.parse(self.prune))
        for key, value in self.pattern.items():
            if key not in PATTERN_KEYS:
                raise FailtraceError(f"unknown pattern setting {key!r}; valid: {', '.join(PATTERN_KEYS)}")
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise FailtraceError(f"pattern setting {key} must be a finite number, got {value!r}")
            if key == "m" and (not isinstance(value, int) or value < 1):
                raise FailtraceError(f"pattern setting m (top supporters looked at) must be an integer >= 1, "
                                     f"got {value!r}")
        return self

    def check_mask_token(self, loaded: Any) -> None:
        """``--mask-token`` against the loaded model's vocabulary, once, before any analysis run is recorded (a model
        described without its weights, as the Ray driver holds it, is checked per case by the workers instead)."""
        model = getattr(loaded, "model", None)
        if self.mask_rule != "replace" or self.mask_token_id is None or not hasattr(model, "get_input_embeddings"):
            return
        vocab = int(model.get_input_embeddings().weight.shape[0])
        if self.mask_token_id >= vocab:
            name = getattr(loaded, "name", "the model")
            raise FailtraceError(f"--mask-token {self.mask_token_id} is not a token id of {name} "
                                 f"(valid: 0..{vocab - 1})")

    @property
    def masking(self) -> MaskingSpec:
        """The masking flip search's settings (rule, mask token, largest k, template text skipped) as one spec."""
        return MaskingSpec(rule=self.mask_rule, token_id=self.mask_token_id, max_k=self.max_k,
                           skip_template=self.skip_template)

    def identity(self) -> dict[str, Any]:
        """Everything that changes a case's content (the case id hashes it). ``skip_template`` only when True (the
        default since it exists): with the older rule (``--mask-template``) ids equal those of analyses made before,
        so such a store is not analysed again."""
        d = asdict(self)
        d["methods"] = list(self.methods)
        if not self.skip_template:
            del d["skip_template"]
        return d
