"""AttnLRP rules written as *modified gradients* with ``detach()`` identities.

Relevance of a tensor x is R(x) = x ⊙ g(x), with g the gradient of the explained quantity under a modified backward
pass. Each rule here returns a tensor whose **forward value is exactly the original one** (bit for bit) and whose
backward is the rule's modified gradient. The patched model therefore stays an ordinary autograd graph: it composes
with batched vector-Jacobian products (``is_grads_batched=True``), activation checkpointing and compilation.

The recurring trick is ``y = value.detach() + (x - x.detach()) * J.detach()``: ``x - x.detach()`` is exactly zero in
the forward pass, so ``y == value``; in the backward pass the only path to ``x`` has the local Jacobian ``J``.

These few lines are hand-written because no maintained library exposes the AttnLRP rules as composable autograd
identities that work on transformers 4 and 5 (LXT ships per-model patched modeling files instead).
"""

from __future__ import annotations

import torch

Tensor = torch.Tensor


def scale_grad(x: Tensor, factor: float) -> Tensor:
    """Identity in the forward pass; the gradient flowing back into ``x`` is multiplied by ``factor``.

    ``factor * x + (1 - factor) * x.detach()`` is not bit-exact in floating point, so the value is rebuilt from the
    detached tensor plus an exact zero that carries the scaled gradient.
    """
    if factor == 1.0:
        return x
    return x.detach() + factor * (x - x.detach())


def uniform_product(a: Tensor, b: Tensor) -> Tensor:
    """Elementwise a·b with the uniform rule: each factor receives half of the ordinary gradient."""
    return scale_grad(a, 0.5) * scale_grad(b, 0.5)


def identity_activation(x: Tensor, y: Tensor, at_zero: float) -> Tensor:
    """Identity rule for an elementwise activation y = f(x): the backward is g_x = g_y · f(x)/x.

    ``at_zero`` is the limit of f(x)/x at x = 0 (f'(0)), used where |x| is tiny to avoid 0/0.
    """
    tiny = torch.finfo(x.dtype).tiny ** 0.5 if x.dtype.is_floating_point else 1e-12
    safe = torch.where(x.abs() > tiny, x, torch.ones_like(x))
    ratio = torch.where(x.abs() > tiny, y / safe, torch.full_like(x, at_zero))
    return y.detach() + (x - x.detach()) * ratio.detach()


def frozen_scale(x: Tensor, y: Tensor, scale: Tensor, center: bool = False) -> Tensor:
    """Normalisation with the normaliser treated as a constant (identity rule for RMSNorm / LayerNorm).

    ``y`` is the module's exact output; ``scale`` the per-channel factor (weight / σ) it applies, with σ frozen.
    ``center=True`` for LayerNorm, whose mean subtraction is linear and keeps its gradient.
    """
    dx = x - x.detach()
    if center:
        dx = dx - dx.mean(dim=-1, keepdim=True)
    return y.detach() + (dx * scale.detach()).to(y.dtype)
