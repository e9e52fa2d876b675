"""AttnLRP as modified gradients: the rules (:mod:`.rules`) and their generic installation (:mod:`.patch`)."""

from failtrace.lrp.patch import METHODS, PatchReport, decoder_layers, lrp_rules

__all__ = ["METHODS", "PatchReport", "decoder_layers", "lrp_rules"]
