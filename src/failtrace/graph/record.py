"""The :class:`AttributionGraph` record: nodes (stage × token relevance), stored edges per transition, metadata."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from failtrace.graph.prune import PrunedGraph, PruneSpec, prune
from failtrace.graph.edgestore import EdgeSet

SCHEMA = "failtrace.graph-record/1"
EXPORT_SCHEMA = "failtrace.graph/1"  # the pruned file of graph.export (named here so that load can refuse it)


@dataclass(frozen=True)
class Stage:
    """A row of nodes: the embeddings (layer −1), a layer's mid-point (after attention) or a layer's output."""

    layer: int
    kind: str  # "embed" | "mid" | "resid"

    @property
    def name(self) -> str:
        """``emb``, ``L3.mid`` or ``L3``."""
        if self.kind == "embed":
            return "emb"
        return f"L{self.layer}.mid" if self.kind == "mid" else f"L{self.layer}"

    def node_id(self, token: int) -> str:
        """Stable node id used in exports: ``<stage>/<token>``, e.g. ``L3/7``."""
        return f"{self.name}/{token}"

    def to_dict(self) -> dict[str, Any]:
        return {"layer": self.layer, "kind": self.kind}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Stage:
        return cls(layer=int(d["layer"]), kind=str(d["kind"]))


@dataclass
class AttributionGraph:
    """An attribution graph of how relevance for the objective flows between hidden states.

    ``relevance[s, i]`` is node (stage s, token i)'s relevance R = Σ_k h·g from the single full AttnLRP backward
    pass (mid-nodes: from the backward through the MLP block), NaN where not computed. ``transitions[t]`` holds the
    stored edges from stage t to stage t+1. Edges have been computed for target nodes whose normalised |R| is at least
    ``metadata['retain_node_threshold']``; :meth:`prune` re-prunes without recomputing anything.
    """

    tokens: list[str]
    token_ids: list[int]
    special_mask: list[bool]
    stages: list[Stage]
    relevance: np.ndarray  # float64 [S, n]
    transitions: list[EdgeSet]
    objective_value: float
    metadata: dict[str, Any] = field(default_factory=dict)
    _pruned: PrunedGraph | None = field(default=None, repr=False, compare=False)

    @property
    def n_tokens(self) -> int:
        return len(self.tokens)

    @property
    def final_node(self) -> tuple[int, int]:
        """(stage index, token position) of the final node: last stage, predicting position."""
        return len(self.stages) - 1, self.n_tokens - 1

    def prune(self, node_threshold: float | None = None, prune_spec: str | PruneSpec | None = None) -> PrunedGraph:
        """A pruned view (see :mod:`failtrace.graph.prune`); defaults are the settings the graph was built with."""
        nt = self.metadata.get("node_threshold", 0.01) if node_threshold is None else node_threshold
        spec = self.metadata.get("prune", "cumulative:0.85") if prune_spec is None else prune_spec
        return prune(self, nt, spec)

    @property
    def pruned(self) -> PrunedGraph:
        """The pruned view with the build settings (computed once)."""
        if self._pruned is None:
            self._pruned = self.prune()
        return self._pruned

    def dense(self, transition: int) -> np.ndarray:
        """The stored edges of one transition as a dense [n, n] matrix A[target, source] (zeros where not stored)."""
        if not -len(self.transitions) <= transition < len(self.transitions):
            n = len(self.transitions)
            raise IndexError(f"transition {transition} does not exist: this graph has {n} (0 to {n - 1})")
        es = self.transitions[transition]
        out = np.zeros((self.n_tokens, self.n_tokens), dtype=np.float64)
        out[es.target, es.source] = es.weight
        return out

    def conservation_error(self) -> float:
        """max_i |Σ_j A[j, i] − R_s(i)| / max|R_s| over transitions whose rows were all computed (NaN if none)."""
        errs = []
        for es in self.transitions:
            if es.computed.all():
                r = self.relevance[es.source_stage]
                errs.append(float(np.abs(es.col_sum - r).max() / max(np.abs(r).max(), 1e-12)))
        return max(errs) if errs else float("nan")

    # -- serialisation --------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Everything, including all stored edges (for the pruned export see :mod:`failtrace.graph.export`)."""
        rel = [[None if not np.isfinite(x) else float(x) for x in row] for row in self.relevance]
        return {
            "schema": SCHEMA, "tokens": self.tokens, "token_ids": self.token_ids, "special_mask": self.special_mask,
            "stages": [s.to_dict() for s in self.stages], "relevance": rel,
            "transitions": [t.to_dict() for t in self.transitions], "objective_value": self.objective_value,
            "metadata": self.metadata,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AttributionGraph:
        rel = np.asarray([[np.nan if x is None else x for x in row] for row in d["relevance"]], dtype=np.float64)
        return cls(
            tokens=list(d["tokens"]), token_ids=[int(t) for t in d["token_ids"]],
            special_mask=[bool(s) for s in d["special_mask"]], stages=[Stage.from_dict(s) for s in d["stages"]],
            relevance=rel, transitions=[EdgeSet.from_dict(t) for t in d["transitions"]],
            objective_value=float(d["objective_value"]), metadata=dict(d.get("metadata", {})),
        )

    def save(self, path: str | Path) -> Path:
        """Write the full record (all stored edges) as JSON."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict()))
        return path

    @classmethod
    def load(cls, path: str | Path) -> AttributionGraph:
        """Read a full record written by :meth:`save`; anything else (a pruned ``graph --json`` export, other JSON,
        a cut file) is one :class:`FailtraceError` naming the file."""
        from failtrace.errors import FailtraceError

        try:
            d = json.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise FailtraceError(f"{path}: no such file") from None
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise FailtraceError(f"{path} is not JSON ({str(exc).splitlines()[0][:200]})") from None
        schema = d.get("schema") if isinstance(d, dict) else None
        if schema == EXPORT_SCHEMA:
            raise FailtraceError(f"{path} is a pruned graph export (graph --json), not a full record: read it with "
                                 "json.load; AttributionGraph.save writes the full record that load reads")
        if schema != SCHEMA:
            raise FailtraceError(f"{path} is not a failtrace graph record (its schema is {schema!r}, not {SCHEMA!r})")
        try:
            return cls.from_dict(d)
        except KeyError as exc:
            raise FailtraceError(f"{path} is a damaged graph record (no {exc})") from None
        except (TypeError, ValueError, IndexError) as exc:
            raise FailtraceError(f"{path} is a damaged graph record ({str(exc)[:200]})") from None
