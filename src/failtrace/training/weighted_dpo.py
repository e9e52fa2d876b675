"""trl's DPO on failtrace's pre-tokenised examples, and token-dpo: DPO with per-token weights on the log-ratio terms.

Plain DPO (trl's ``sigmoid`` loss), for a prompt x with chosen completion y⁺ and rejected completion y⁻:

    s(y)  = Σ_t [ log π_θ(y_t | x, y_<t) − log π_ref(y_t | x, y_<t) ]          (sum over completion tokens)
    L_DPO = −log σ( β · (s(y⁺) − s(y⁻)) )

token-dpo weights every token's log-ratio term by the attribution-derived weight w_t of that token
(:mod:`failtrace.training.data`, the weights ``export-dpo`` writes):

    s_w(y) = Σ_t w_t · [ log π_θ(y_t | x, y_<t) − log π_ref(y_t | x, y_<t) ]
    L_tok  = −log σ( β · (s_w(y⁺) − s_w(y⁻)) )
    ∂L_tok/∂θ = −β σ(−β Δ_w) [ Σ_t w⁺_t ∇ log π_θ(y⁺_t | …) − Σ_t w⁻_t ∇ log π_θ(y⁻_t | …) ],   Δ_w = s_w(y⁺) − s_w(y⁻)

so each token's push is scaled by its weight. The answer-prefix tokens are the same tokens in the same context in
y⁺ and y⁻ with the same weight, so their terms cancel exactly (in plain DPO too): with ``tail_weight`` 0, token-dpo
trains the decision token alone (contrast up, target down), relative to the reference; with ``tail_weight`` t the
continuations count t times as much as in plain DPO.

What is written here is only that weighting. trl sums the per-token log-probabilities its fused LM head returns
(``model(..., labels=..., fused_lm_head=True).log_probs``, one per position, zero off the completion) over the
sequence, for the policy and the reference alike. :func:`weight_log_probs` wraps both models' forward so that those
per-token log-probabilities come back multiplied by w_t: trl's own sum then is Σ_t w_t log π(y_t), and trl's own
loss, metrics and optimisation run unchanged. The weights travel in the batch as ``token_weights`` (aligned with
``input_ids``, 0 on the prompt and padding; the log-prob at position i scores token i + 1, hence the shift by one).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import torch
from trl import DPOTrainer
from trl.trainer.dpo_trainer import DataCollatorForPreference
from trl.trainer.utils import pad


@dataclass
class WeightedPreferenceCollator(DataCollatorForPreference):
    """trl's preference collator plus ``token_weights``: [chosen rows; rejected rows] × sequence, like ``input_ids``."""

    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        """The parent's padded batch plus a per-token weight row for every chosen and rejected completion (prompt
        tokens weigh 0)."""
        out = super().torch_call(examples)
        rows = ([[0.0] * len(e["prompt_ids"]) + [float(w) for w in e["chosen_weights"]] for e in examples]
                + [[0.0] * len(e["prompt_ids"]) + [float(w) for w in e["rejected_weights"]] for e in examples])
        if self.max_length is not None:  # the same truncation as the parent applies to the ids
            rows = [r[: self.max_length] if self.truncation_mode == "keep_start" else r[-self.max_length:]
                    for r in rows]
        out["token_weights"] = pad([torch.tensor(r, dtype=torch.float32) for r in rows], padding_value=0.0,
                                   padding_side="right", pad_to_multiple_of=self.pad_to_multiple_of)
        return out


def weight_log_probs(model: Any) -> None:
    """Make ``model(..., fused_lm_head=True, token_weights=W)`` return ``log_probs * W[:, 1:]`` (see the module
    docstring). Without ``token_weights`` the forward is unchanged; must run after trl patched in its fused head."""
    inner = model.forward

    @functools.wraps(inner)
    def forward(*args: Any, token_weights: torch.Tensor | None = None, **kwargs: Any) -> Any:
        out = inner(*args, **kwargs)
        if token_weights is not None and kwargs.get("fused_lm_head") and getattr(out, "log_probs", None) is not None:
            w = token_weights[:, 1:].to(out.log_probs)  # log_probs[:, i] = log p(input_ids[:, i + 1] | ...)
            out.log_probs = out.log_probs * w[:, -out.log_probs.size(1):]
        return out

    model.forward = forward


class PretokenizedDPOTrainer(DPOTrainer):
    """trl's DPOTrainer on a dataset that already has ``prompt_ids`` / ``chosen_ids`` / ``rejected_ids`` (failtrace's
    own tokens); any other dataset goes through trl's preparation unchanged."""

    def _prepare_dataset(self, dataset: Any, processing_class: Any, args: Any, dataset_name: str) -> Any:
        if {"prompt_ids", "chosen_ids", "rejected_ids"} <= set(dataset.column_names or []):
            return dataset
        return super()._prepare_dataset(dataset, processing_class, args, dataset_name)


class TokenWeightedDPOTrainer(PretokenizedDPOTrainer):
    """token-dpo: trl's DPO whose per-token log-ratio terms are weighted (module docstring). The dataset needs
    ``chosen_weights`` / ``rejected_weights`` (one per completion token); pass an explicit ``ref_model``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        config = kwargs.get("args")
        if config is not None:
            if config.precompute_ref_log_probs:
                raise ValueError("token-dpo computes the reference log-probs per batch "
                                 "(precompute_ref_log_probs=False)")
            if config.loss_type != ["sigmoid"] or config.ld_alpha is not None or config.use_weighting:
                raise ValueError("token-dpo weights trl's sigmoid DPO loss only (loss_type='sigmoid', no ld_alpha, "
                                 "no WPO use_weighting)")
            config.remove_unused_columns = False  # keep the weight columns for the collator
        super().__init__(*args, **kwargs)
        for model in (self.model, self.ref_model):
            if model is not None:
                weight_log_probs(model)
