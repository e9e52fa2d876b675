"""The :class:`Attribution` record: what one contrastive attribution produced, in a form other tools can read."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from failtrace.attribution.normalize import normalize, relevance_scale

_SCHEMA = "failtrace.attribution/1"


_VISIBLE = {" ": "·", "\n": "↵", "\t": "→", "\r": "␍", "\x7f": "␡"}


def visible(token: str) -> str:
    """Show whitespace in a decoded token (space '·', newline '↵', tab '→', carriage return '␍') and every other
    control character as a symbol (ESC '␛', BEL '␇', C1 codes as \\x9b): a token from a tool's output must never
    move the cursor or recolour the terminal it is printed on. A lone surrogate (text a checker quoted from a
    candidate) is shown as its escape, \\ud800: a terminal cannot be sent it at all."""
    return "".join(_VISIBLE.get(ch) or (chr(0x2400 + ord(ch)) if ord(ch) < 0x20 else
                                        f"\\x{ord(ch):02x}" if 0x80 <= ord(ch) < 0xA0 else
                                        f"\\u{ord(ch):04x}" if 0xD800 <= ord(ch) <= 0xDFFF else ch) for ch in token)


@dataclass
class TokenRef:
    """A vocabulary token: id and decoded text."""

    id: int
    text: str

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "text": self.text}

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> TokenRef | None:
        return None if d is None else cls(id=int(d["id"]), text=str(d["text"]))


@dataclass
class Attribution:
    """Relevance of every input token and every (layer, token) hidden state for one objective.

    ``hidden_relevance[0]`` is the embedding output (layer -1 in graph terms); ``hidden_relevance[l]`` is decoder
    layer ``l-1``'s output. ``input_relevance`` equals ``hidden_relevance[0]``. ``delta_logit`` is the objective's
    value (Δℓ for ``logit_diff``); ``relevance_sum`` is the summed input relevance, which AttnLRP does not conserve.
    """

    model: str
    tokens: list[str]
    token_ids: list[int]
    special_mask: list[bool]
    target: TokenRef
    contrast: TokenRef | None
    objective: str
    method: str
    delta_logit: float
    input_relevance: np.ndarray
    hidden_relevance: np.ndarray
    prompt_length: int  # tokens before the answer prefix; positions >= prompt_length are the model's own answer
    position: int  # index of the token whose next-token prediction is explained (the last input token)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def relevance_sum(self) -> float:
        return float(np.sum(self.input_relevance))

    @property
    def last_layer_sum(self) -> float:
        """Summed relevance of the last decoder layer's output: equals ``delta_logit`` up to float error."""
        return float(np.sum(self.hidden_relevance[-1]))

    @property
    def scale(self) -> float:
        """Largest |R| among non-special tokens (1.0 if there is none), the normalisation constant."""
        return relevance_scale(self.input_relevance, self.special_mask)

    @property
    def normalized(self) -> np.ndarray:
        """Input relevance divided by the largest |R| among non-special tokens (special tokens may exceed 1)."""
        return normalize(self.input_relevance, self.special_mask)

    def top_tokens(self, k: int = 10, sign: int = 1, include_special: bool = False) -> list[tuple[int, str, float]]:
        """The k positions with the largest relevance of the given sign: (position, token, relevance)."""
        r = np.asarray(self.input_relevance, dtype=float) * sign
        idx = [i for i in np.argsort(-r) if include_special or not self.special_mask[i]]
        return [(int(i), self.tokens[i], float(self.input_relevance[i])) for i in idx[:k] if r[i] > 0]

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": _SCHEMA,
            "model": self.model,
            "tokens": self.tokens,
            "token_ids": self.token_ids,
            "special_mask": self.special_mask,
            "target": self.target.to_dict(),
            "contrast": None if self.contrast is None else self.contrast.to_dict(),
            "objective": self.objective,
            "method": self.method,
            "delta_logit": self.delta_logit,
            "relevance_sum": self.relevance_sum,
            "last_layer_sum": self.last_layer_sum,
            "input_relevance": [float(x) for x in self.input_relevance],
            "normalized_relevance": [float(x) for x in self.normalized],
            "hidden_relevance": [[float(x) for x in row] for row in self.hidden_relevance],
            "prompt_length": self.prompt_length,
            "position": self.position,
            "extra": self.extra,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Attribution:
        return cls(
            model=d["model"],
            tokens=list(d["tokens"]),
            token_ids=[int(t) for t in d["token_ids"]],
            special_mask=[bool(s) for s in d["special_mask"]],
            target=TokenRef.from_dict(d["target"]),  # type: ignore[arg-type]
            contrast=TokenRef.from_dict(d.get("contrast")),
            objective=d["objective"],
            method=d["method"],
            delta_logit=float(d["delta_logit"]),
            input_relevance=np.asarray(d["input_relevance"], dtype=np.float64),
            hidden_relevance=np.asarray(d["hidden_relevance"], dtype=np.float64),
            prompt_length=int(d["prompt_length"]),
            position=int(d["position"]),
            extra=dict(d.get("extra", {})),
        )

    def save_json(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1))
        return path
