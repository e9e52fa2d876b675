"""Contrastive attribution: the objective, input and hidden-state relevance, and baselines."""

from failtrace.attribution.core import attribute
from failtrace.attribution.engine import PassResult, relevance_pass
from failtrace.attribution.methods import ATTRIBUTION_METHODS, register_method
from failtrace.attribution.objective import OBJECTIVES, objective_value, register_objective
from failtrace.attribution.record import Attribution, TokenRef, visible

__all__ = ["ATTRIBUTION_METHODS", "OBJECTIVES", "Attribution", "PassResult", "TokenRef", "attribute",
           "objective_value", "register_method", "register_objective", "relevance_pass", "visible"]
