"""Streaming edge storage: a layer transition's edges arrive in blocks of target rows and only the strongest stay.

:class:`EdgeAccumulator` never holds the dense n×n matrix. From each block it keeps exact per-row and per-column
sums (for the cumulative-mass pruning and the conservation check) and merges the block's non-zero edges into a pool
of at most ``budget`` edges by |weight| (an exact streaming top-k). ``floor`` is the largest |weight| ever dropped:
every edge stronger than ``floor`` is stored, so any pruning whose cut-off lies above ``floor`` is exact without
recomputing edges, and re-pruning below it is reported as incomplete.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

Tensor = torch.Tensor


@dataclass
class EdgeSet:
    """Stored edges of one transition ``source_stage → target_stage`` (indices into the graph's stages).

    ``target``/``source`` are token positions, sorted by decreasing |weight|. ``row_mass[j]`` = Σ_i |A[j, i]| and
    ``row_sum[j]`` = Σ_i A[j, i] for computed target rows (NaN elsewhere); ``col_sum[i]`` = Σ_j A[j, i] over the
    computed rows (equals the source node's relevance when every row was computed).
    """

    source_stage: int
    target_stage: int
    target: np.ndarray  # int32 [m]
    source: np.ndarray  # int32 [m]
    weight: np.ndarray  # float32 [m]
    row_mass: np.ndarray  # float64 [n]
    row_sum: np.ndarray  # float64 [n]
    col_sum: np.ndarray  # float64 [n]
    computed: np.ndarray  # bool [n]
    floor: float = 0.0
    method: str = ""
    seconds: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        """True when every non-zero edge of the computed rows is stored."""
        return self.floor == 0.0

    def __len__(self) -> int:
        return int(self.weight.shape[0])

    def to_dict(self) -> dict[str, Any]:
        def arr(a: np.ndarray) -> list[Any]:
            return [None if isinstance(x, float) and not np.isfinite(x) else x for x in a.tolist()]

        return {
            "source_stage": self.source_stage, "target_stage": self.target_stage,
            "target": self.target.tolist(), "source": self.source.tolist(), "weight": self.weight.tolist(),
            "row_mass": arr(self.row_mass), "row_sum": arr(self.row_sum), "col_sum": self.col_sum.tolist(),
            "computed": self.computed.tolist(), "floor": self.floor, "method": self.method,
            "seconds": self.seconds, "info": self.info,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EdgeSet:
        def f64(x: list[Any]) -> np.ndarray:
            return np.asarray([np.nan if v is None else v for v in x], dtype=np.float64)

        return cls(
            source_stage=int(d["source_stage"]), target_stage=int(d["target_stage"]),
            target=np.asarray(d["target"], dtype=np.int32), source=np.asarray(d["source"], dtype=np.int32),
            weight=np.asarray(d["weight"], dtype=np.float32), row_mass=f64(d["row_mass"]),
            row_sum=f64(d["row_sum"]), col_sum=np.asarray(d["col_sum"], dtype=np.float64),
            computed=np.asarray(d["computed"], dtype=bool), floor=float(d.get("floor", 0.0)),
            method=str(d.get("method", "")), seconds=float(d.get("seconds", 0.0)), info=dict(d.get("info", {})),
        )


class EdgeAccumulator:
    """Collects blocks of edge rows; keeps the ``budget`` strongest edges (all of them when ``budget`` is None)."""

    def __init__(self, n: int, budget: int | None) -> None:
        self.n = n
        self.budget = budget
        self.row_mass = np.full(n, np.nan)
        self.row_sum = np.full(n, np.nan)
        self.col_sum = np.zeros(n, dtype=np.float64)
        self.computed = np.zeros(n, dtype=bool)
        self.floor = 0.0
        self._tgt: list[Tensor] = []
        self._src: list[Tensor] = []
        self._w: list[Tensor] = []
        self._count = 0

    def add(self, rows: Tensor, block: Tensor) -> None:
        """Add edge rows: ``block[r, i]`` = A[rows[r], i]."""
        block = block.detach().float().cpu()
        rows = rows.detach().cpu().long()
        r_np = rows.numpy()
        b64 = block.double()
        self.row_mass[r_np] = b64.abs().sum(1).numpy()
        self.row_sum[r_np] = b64.sum(1).numpy()
        self.col_sum += b64.sum(0).numpy()
        self.computed[r_np] = True
        nz = block.nonzero(as_tuple=True)
        self._tgt.append(rows[nz[0]].int())
        self._src.append(nz[1].int())
        self._w.append(block[nz])
        self._count += int(nz[0].numel())
        if self.budget is not None and self._count > 2 * self.budget:
            self._shrink()

    def add_zero_rows(self, rows: Tensor) -> None:
        """Rows known to be all zero (their seed is zero): computed, without edges."""
        r_np = rows.detach().cpu().long().numpy()
        self.row_mass[r_np] = 0.0
        self.row_sum[r_np] = 0.0
        self.computed[r_np] = True

    def _shrink(self) -> None:
        """Keep the ``budget`` strongest edges of the pool; remember the strongest one dropped."""
        tgt, src, w = torch.cat(self._tgt), torch.cat(self._src), torch.cat(self._w)
        assert self.budget is not None
        if w.numel() > self.budget:
            mag = w.abs()
            keep = torch.topk(mag, self.budget, sorted=False).indices
            dropped = torch.ones_like(mag, dtype=torch.bool)
            dropped[keep] = False
            self.floor = max(self.floor, float(mag[dropped].max()))
            tgt, src, w = tgt[keep], src[keep], w[keep]
        self._tgt, self._src, self._w = [tgt], [src], [w]
        self._count = int(w.numel())

    def finish(self, source_stage: int, target_stage: int, method: str, seconds: float,
               info: dict[str, Any] | None = None) -> EdgeSet:
        """The stored edges, sorted by decreasing |weight|."""
        if self.budget is not None and self._count > self.budget:
            self._shrink()
        if self._w:
            tgt, src, w = torch.cat(self._tgt), torch.cat(self._src), torch.cat(self._w)
        else:
            tgt = src = torch.zeros(0, dtype=torch.int32)
            w = torch.zeros(0)
        order = torch.argsort(w.abs(), descending=True, stable=True)
        return EdgeSet(
            source_stage=source_stage, target_stage=target_stage, target=tgt[order].numpy().astype(np.int32),
            source=src[order].numpy().astype(np.int32), weight=w[order].numpy().astype(np.float32),
            row_mass=self.row_mass, row_sum=self.row_sum, col_sum=self.col_sum, computed=self.computed,
            floor=self.floor, method=method, seconds=seconds, info=dict(info or {}),
        )
