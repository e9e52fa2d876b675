"""The LRP methods, each declared once: which rules it installs and which gradient factors reach q, k and v.

Both the generic patch (:mod:`failtrace.lrp.patch`, which installs the rules on a model) and the closed-form graph
edges (:mod:`failtrace.graph.closed_form`, which re-derives the same modified Jacobian by hand) read this table, so
a method cannot mean one thing in an attribution and another in a graph.

Attention is q, k, v → softmax(c·q·kᵀ) v. AttnLRP applies the uniform ε-rule to both products of two activations:
A·V gives half to A and half to V, and A's half splits again between q and k, so the gradients reaching q, k, v are
scaled by ¼, ¼, ½ (the softmax itself is left as is). CP-LRP treats the attention weights as constants: q and k get
nothing (factor 0, i.e. detached) and v gets the whole gradient. Gradient × input changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from failtrace.errors import FailtraceError


@dataclass(frozen=True)
class LrpMethod:
    """One row of the table: the rules a method installs."""

    name: str
    q: float  # factor on the gradient reaching the attention queries (0: detached)
    k: float  # ... the keys
    v: float  # ... the values
    frozen_norms: bool  # identity rule on RMSNorm/LayerNorm: the normaliser σ is a constant
    mlp_rules: bool  # identity rule on the MLP activation, uniform rule on the gate product
    summary: str

    @property
    def changes_nothing(self) -> bool:
        """True for plain gradient × input: no rule to install at all."""
        return (self.q, self.k, self.v) == (1.0, 1.0, 1.0) and not self.frozen_norms and not self.mlp_rules


LRP_METHODS: dict[str, LrpMethod] = {
    m.name: m for m in (
        LrpMethod("attnlrp", 0.25, 0.25, 0.5, True, True, "AttnLRP: uniform ε-rule on QKᵀ and AV, identity rules"),
        LrpMethod("cp-lrp", 0.0, 0.0, 1.0, True, True, "CP-LRP: attention weights constant, identity rules"),
        LrpMethod("gradxinput", 1.0, 1.0, 1.0, False, False, "gradient × input (no rule)"),
    )
}


def lrp_method(name: str) -> LrpMethod:
    """The table row for ``name``, or a :class:`FailtraceError` listing the valid names."""
    if name not in LRP_METHODS:
        raise FailtraceError(f"unknown method {name!r}; valid: {', '.join(LRP_METHODS)}")
    return LRP_METHODS[name]
