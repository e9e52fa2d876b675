"""The pair search's settings and its per-failure result record (shared by the search and the pairs stage)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from failtrace.errors import FailtraceError


@dataclass
class PairSettings:
    """Knobs of the pair search. ``identity()`` holds those that change results; the rest only change speed.

    ``rollout_tokens`` is the rollout budget (a rollout's completion has at most this many tokens); None means the
    collection's ``max_new_tokens``. ``early_stop`` ends a rollout as soon as the benchmark says its prefix already
    fails (``prefix_decides_fail``), ``position_batch`` is the most completion positions whose rollouts are decoded
    as one batch, and ``stop_every`` is how many tokens a row decodes between two prefix checks. ``order`` is the
    order in which walked positions are rolled out (:data:`~failtrace.failures.order.ORDERS`); whatever it is, the
    reported pair is the in-order one, so it is speed-only like batching and early stopping. ``halt_at_answer``
    stops decoding a block's remaining rollouts as soon as its answer is known (rows are checked in order as they
    end), also speed-only; off only to measure what it saves. ``draft_tokens`` is the most lookup-draft tokens a
    rollout verifies per forward pass (:mod:`failtrace.failures.decode`; 0: plain greedy steps), speed-only too;
    ``draft_from_completion`` also drafts a rollout from the failing completion after its position (which rollouts
    often rejoin), speed-only; off only to measure what it saves.

    ``try_unbounded`` (off by default) also searches failures whose completion hit the token limit (after any
    continuation to a larger ``rollout_tokens``). Their status is ``unbounded`` whatever the search finds (the
    failure itself is not verified), so the search can only record where a recovery would be; it is by far the most
    expensive part (long completions, rollouts that run to the budget) and never adds a clean pair.
    """

    top_k: int = 10
    min_delta: float = 1.0
    max_positions: int = 64
    try_unbounded: bool = False  # search failures that hit the budget too (never clean: see the docstring)
    rollout_batch_size: int | None = None  # rows decoded together at most (default: as many as the cache allows)
    rollout_tokens: int | None = None
    early_stop: bool = True
    position_batch: int = 4
    stop_every: int = 8
    order: str = "in-order"
    halt_at_answer: bool = True  # stop the rollouts after a block's answer at once (cost only, never the pair)
    draft_tokens: int = 8  # lookup-draft tokens verified per pass at most (0: off; cost only, never the pair)
    draft_from_completion: bool = True  # drafts from the failing completion too (cost only, never the pair)

    def validate(self) -> None:
        """Refuse settings that cannot run (one clear line naming the option), before any model loads."""
        if self.top_k < 1:
            raise FailtraceError(f"--top-k must be at least 1, got {self.top_k}")
        if self.max_positions < 1:
            raise FailtraceError(f"--max-positions must be at least 1, got {self.max_positions}")
        if self.rollout_batch_size is not None and self.rollout_batch_size < 1:
            raise FailtraceError(f"--rollout-batch-size must be at least 1, got {self.rollout_batch_size}")
        if self.rollout_tokens is not None and self.rollout_tokens < 1:
            raise FailtraceError(f"--rollout-tokens must be at least 1, got {self.rollout_tokens}")
        if self.position_batch < 1:
            raise FailtraceError(f"--position-batch must be at least 1, got {self.position_batch}")
        if self.draft_tokens < 0:
            raise FailtraceError(f"--draft-tokens must be at least 0, got {self.draft_tokens}")
        if self.stop_every < 1:
            raise FailtraceError(f"stop_every must be at least 1, got {self.stop_every}")
        from failtrace.failures.order import ORDERS

        if self.order not in ORDERS:
            raise FailtraceError(f"--order must be one of {', '.join(ORDERS)}, got {self.order!r}")

    def identity(self, max_new_tokens: int | None = None) -> dict[str, Any]:
        """What changes the results. Batching, early stopping, the position order and a judge's hint only change
        speed; the rollout budget counts only when it differs from the collection's budget (so default runs keep
        their ids)."""
        out: dict[str, Any] = {"top_k": self.top_k, "min_delta": float(self.min_delta),
                               "max_positions": self.max_positions, "try_unbounded": self.try_unbounded}
        if self.rollout_tokens is not None and self.rollout_tokens != max_new_tokens:
            out["rollout_tokens"] = self.rollout_tokens
        return out


@dataclass
class PairResult:
    """The outcome of the pair search for one failure (one row of the ``pairs`` table)."""

    status: str
    reason: str = ""
    position: int | None = None  # index of the target token in the full sequence prompt + completion
    completion_offset: int | None = None  # the same position counted from the completion's first token
    target_id: int | None = None
    target_text: str | None = None
    contrast_id: int | None = None
    contrast_text: str | None = None
    contrast_source: str | None = None  # "model" or "helper" (the stronger sibling)
    contrast_rank: int | None = None  # 1-based rank among its source's alternatives (target excluded)
    contrast_model_rank: int | None = None  # 1-based rank under the model's logits (target excluded)
    target_logit: float | None = None
    contrast_logit: float | None = None
    delta_logit: float | None = None
    recovered_completion: str | None = None
    rollouts: int = 0
    checks: int = 0
    positions_walked: int = 0
    unverifiable_rollouts: int = 0
    hit_length_limit: bool = False
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    seconds_prefix: float = 0.0
    seconds_rollouts: float = 0.0
    seconds_check: float = 0.0
    # cost detail (store columns since schema version 3)
    tokens_decoded: int = 0  # tokens produced by all rollouts (forced tokens included)
    rollouts_stopped: int = 0  # rollouts ended early because their prefix already decided the verdict (fail)
    rollouts_final: int = 0  # rollouts ended early because the checker reads nothing after their prefix (checked)
    positions_decided: int = 0  # walked positions skipped because the completion's own prefix already decides
    positions_rolled: int = 0  # walked positions whose rollouts were decoded (in any order)
    judge_position: int | None = None  # completion offset a judge model hinted (None: no judge, or no match)
    seconds_judge: float = 0.0
    # failing rollouts cut at the budget with the verdict open, where in-order search checks them (said in the
    # reason and in pairs' closing hint; not a store column)
    rollouts_cut_open: int = 0
    # a completion that hit the length limit, continued to a larger rollout budget: "pass" (an artefact of the
    # budget), "fail" (a real failure, then searched), "length" (hit that budget too), "unverifiable"; None: not tried
    continued: str | None = None
    continued_tokens: int | None = None
    # not a store column: rollouts whose verdict key (benchmark.verdict_key) had been checked before in this search
    checks_reused: int = 0

    @property
    def found(self) -> bool:
        """A recovering contrast was found (whatever the final status)."""
        return self.contrast_id is not None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PairResult:
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in names})


def visible(token: str) -> str:
    """A decoded token with its whitespace and control characters shown (attribution.record.visible), for
    messages and pair reasons that reach a terminal."""
    from failtrace.attribution.record import visible as shown

    return shown(token)


def same_tokenizer(a: Any, b: Any) -> bool:
    """True when two tokenizers map every token string to the same id."""
    if a is b:
        return True
    try:
        return bool(a.get_vocab() == b.get_vocab())
    except Exception:  # pragma: no cover - exotic tokenizers
        return False


def check_rollout_window(settings: PairSettings, model: str, window: int | None) -> None:
    """A rollout budget beyond the model's context window is refused, as collect refuses such a generation budget
    (the model never saw those positions, and a rollout that never stops would run for hours)."""
    if window is not None and settings.rollout_tokens is not None and settings.rollout_tokens > window:
        raise FailtraceError(f"--rollout-tokens {settings.rollout_tokens} is more than {model}'s context window "
                             f"({window} tokens); give {window} or less (the prompt shares the window)")


def check_models(settings: PairSettings, loaded: Any, helper: Any | None) -> None:
    """A sibling must share the model's tokenizer (its tokens are forced into the model), and --top-k must be below
    the vocabulary (the alternatives exclude the target)."""
    if helper is not None and not same_tokenizer(loaded.tokenizer, helper.tokenizer):
        raise FailtraceError(
            f"--sibling {helper.name} uses a different tokenizer than {loaded.name} (their vocabularies "
            f"differ); the sibling must share the model's tokenizer so its tokens can be forced into the model"
        )
    vocab = getattr(getattr(loaded.model, "config", None), "vocab_size", None)
    if isinstance(vocab, int) and settings.top_k >= vocab:
        raise FailtraceError(f"--top-k {settings.top_k} is not below {loaded.name}'s vocabulary of {vocab} "
                             f"tokens (the alternatives exclude the target); give at most {vocab - 1}")
