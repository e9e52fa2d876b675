"""Scale-out: collect, pairs and analyse on Ray workers (optional extra ``failtrace[ray]``), one store, nothing lost.

Importing this package does not import Ray; :func:`collect_on_ray`/:func:`pairs_on_ray`/:func:`analyse_on_ray` do,
and say how to install it when it is missing. docs/SCALE.md describes the design, the fault handling and a plan
for GPU clusters.
"""

from failtrace.scale.pool import Task, WorkerPool, ensure_ray
from failtrace.scale.stages import analyse_on_ray, collect_on_ray, pairs_on_ray
from failtrace.scale.work import DescribedModel, WorkerModel, ModelWorker, analyse_item, collect_item, pair_item

__all__ = ["DescribedModel", "WorkerModel", "ModelWorker", "Task", "WorkerPool", "analyse_item", "analyse_on_ray",
           "collect_item", "collect_on_ray", "ensure_ray", "pair_item", "pairs_on_ray"]
