"""Contrastive attribution: the objective, input and hidden-state relevance, and baselines."""

from failtrace.attribution.core import ALL_METHODS, attribute
from failtrace.attribution.engine import PassResult, relevance_pass
from failtrace.attribution.objective import OBJECTIVES, objective_value
from failtrace.attribution.record import Attribution, TokenRef, visible

__all__ = ["ALL_METHODS", "OBJECTIVES", "Attribution", "PassResult", "TokenRef", "attribute", "objective_value",
           "relevance_pass", "visible"]
