"""One forward and one backward pass that give the relevance of every hidden state for an objective.

:func:`relevance_pass` is shared by :func:`failtrace.attribute` and by the graph builder: it runs the model on the
input embeddings, captures the embedding output, every decoder layer's output and the first layer's own input,
evaluates the objective on the logits of the last position only (the full logit matrix is never formed), and
back-propagates once under the chosen LRP rules. R = h ⊙ g summed over the hidden dimension gives one number per
(layer, token).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterator

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from failtrace.lrp.methods import lrp_method
from failtrace.lrp.patch import decoder_layers, lrp_rules
from failtrace.lrp.rules import identity_activation
from failtrace.models.limits import require_finite

# Inputs longer than this run each decoder layer under activation checkpointing (recomputed in the backward pass),
# which bounds memory to about one layer's activations plus the residual stream.
CHECKPOINT_ABOVE = 1024


@dataclass
class PassResult:
    """Hidden states h[l] (the token embeddings first, then each layer's output), their modified gradients, the
    objective. ``layer0``: the first decoder layer's own input and its gradient, when the model changes the
    embeddings before that layer (transformers 4's Gemma-2 scales them by √d; GPT-2 adds position embeddings)."""

    hidden: list[torch.Tensor]  # each [n, d], detached
    grads: list[torch.Tensor]  # each [n, d]
    value: float
    logits: torch.Tensor  # [vocab] at the explained position, detached
    layer0: tuple[torch.Tensor, torch.Tensor] | None = None

    def relevance(self) -> torch.Tensor:
        """[L+1, n] relevance per (layer, token), in float64 for stable sums."""
        return torch.stack([(h.double() * g.double()).sum(-1) for h, g in zip(self.hidden, self.grads)])

    def from_layer0(self) -> PassResult:
        """The pass with state 0 = the first layer's real input: what the graph re-runs layer 0 from (its edges
        conserve only then). For scaled embeddings its relevance equals the embeddings' (x·∂f/∂x is scale-free)."""
        if self.layer0 is None:
            return self
        return replace(self, hidden=[self.layer0[0], *self.hidden[1:]], grads=[self.layer0[1], *self.grads[1:]],
                       layer0=None)


def base_and_head(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """The base (decoder) model and the output projection, found through transformers' generic accessors."""
    base = None
    for attr in (getattr(model, "base_model_prefix", "model"), "model", "transformer"):
        cand = getattr(model, attr, None)
        if isinstance(cand, nn.Module) and cand is not model:
            base = cand
            break
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if base is None or head is None:
        from failtrace.errors import UnsupportedModelError

        raise UnsupportedModelError(f"{type(model).__name__} is not a causal LM with a base model and an LM head")
    return base, head


def final_logits(model: nn.Module, head: nn.Module, last_hidden: torch.Tensor,
                 identity_rule: bool = False) -> torch.Tensor:
    """Logits from the final hidden state, with the model's final soft-capping c·tanh(z/c) if it has one. Its
    backward is the true derivative (sech²(z/c)) unless ``identity_rule``: an LRP method's rules (those with
    ``mlp_rules``) pass relevance through the element-wise cap as tanh(z/c)·c/z. Gradient × input and integrated
    gradients need the true gradient: with the rule, IG's completeness gap on a capped model stayed at half of Δf
    whatever the number of steps."""
    logits = head(last_hidden)
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:
        capped = cap * torch.tanh(logits / cap)
        logits = identity_activation(logits, capped, at_zero=1.0) if identity_rule else capped
    return logits


@contextlib.contextmanager
def checkpointed_layers(layers: nn.ModuleList, enabled: bool) -> Iterator[None]:
    """Run each decoder layer under non-reentrant activation checkpointing (instance-level, undone on exit)."""
    if not enabled:
        yield
        return
    patched = []
    try:
        for layer in layers:
            original = layer.forward

            def fwd(*args: Any, _orig: Callable[..., Any] = original, **kwargs: Any) -> Any:
                return checkpoint(_orig, *args, use_reentrant=False, **kwargs)

            layer.forward = fwd
            patched.append(layer)
        yield
    finally:
        for layer in patched:
            layer.__dict__.pop("forward", None)


def relevance_pass(
    model: nn.Module,
    input_ids: torch.Tensor | list[int],
    objective: Callable[[torch.Tensor], torch.Tensor],
    method: str = "attnlrp",
    use_checkpoint: bool | None = None,
    patched: bool = False,
) -> PassResult:
    """Forward + backward for ``objective(logits_at_last_position)`` under ``method``'s rules.

    ``patched=True`` means the caller already holds :func:`lrp_rules` for this model.
    """
    device = next(model.parameters()).device
    ids = torch.as_tensor(input_ids, device=device).reshape(1, -1)
    n = ids.shape[1]
    layers = decoder_layers(model)
    base, head = base_and_head(model)
    if use_checkpoint is None:
        use_checkpoint = n > CHECKPOINT_ABOVE
    outputs: list[torch.Tensor] = []
    first_input: list[torch.Tensor] = []

    def keep(_mod: nn.Module, _inp: Any, out: Any) -> None:
        h = out[0] if isinstance(out, (tuple, list)) else out
        outputs.append(h)

    def keep_first_input(_mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        x = args[0] if args else kwargs.get("hidden_states")
        if not first_input and isinstance(x, torch.Tensor):
            first_input.append(x)

    rules = contextlib.nullcontext() if patched else lrp_rules(model, method)
    with rules, checkpointed_layers(layers, use_checkpoint), torch.enable_grad():
        handles = [layer.register_forward_hook(keep) for layer in layers]
        handles.append(layers[0].register_forward_pre_hook(keep_first_input, with_kwargs=True))
        try:
            emb = model.get_input_embeddings()(ids).detach().requires_grad_(True)
            out = base(inputs_embeds=emb, use_cache=False)
        finally:
            for h in handles:
                h.remove()
        last = out[0] if isinstance(out, tuple) else out.last_hidden_state
        logits = final_logits(model, head, last[0, -1], identity_rule=lrp_method(method).mlp_rules)
        value = objective(logits)
        states = [emb] + outputs[-len(layers):]
        require_finite(*states, value)  # the hidden states first: they carry the model's dtype
        # the first layer's own input, when the model's forward changed the embeddings before it (PassResult)
        x0 = first_input[0] if first_input and first_input[0] is not emb and first_input[0].shape == emb.shape \
            else None
        for s in states + ([x0] if x0 is not None else []):
            s.retain_grad()
        value.backward()

    def grad_of(s: torch.Tensor) -> torch.Tensor:
        return s.grad[0].detach() if s.grad is not None else torch.zeros_like(s[0])

    return PassResult(hidden=[s[0].detach() for s in states], grads=[grad_of(s) for s in states],
                      value=float(value.detach()), logits=logits.detach().float(),
                      layer0=None if x0 is None else (x0[0].detach(), grad_of(x0)))
