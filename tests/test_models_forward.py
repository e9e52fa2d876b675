"""Every stage's plain forward pass goes through ``models.forward``: a model class whose forward has no
``logits_to_keep`` (older transformers releases and remote-code models) gives the same logits, greedy token and
attention relevance as the model that has it; before, the alternatives, the contrast's greedy token and the
attention baseline each called the model with ``logits_to_keep`` themselves and raised TypeError."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from failtrace_testkit.toy import toy_loaded


def _without_logits_to_keep(model: Any) -> Any:
    """The same weights under a subclass whose forward refuses ``logits_to_keep``, as a class without it does."""
    base = type(model)

    class NoLogitsToKeep(base):  # type: ignore[misc, valid-type]
        def forward(self, *args: Any, **kwargs: Any) -> Any:
            if "logits_to_keep" in kwargs:
                raise TypeError("forward() got an unexpected keyword argument 'logits_to_keep'")
            return base.forward(self, *args, **kwargs)

    model.__class__ = NoLogitsToKeep
    return model


@pytest.mark.tf4  # the argument names differ across transformers versions: run on 4.x too
def test_a_model_without_logits_to_keep_gives_the_same_logits_token_and_attention() -> None:
    from failtrace.attribution.attention import attention_relevance
    from failtrace.attribution.contrast import greedy_token
    from failtrace.cases.alternatives import next_logits

    ids = [5, 9, 14, 3, 22, 7, 11]
    new, old = toy_loaded(seed=3), toy_loaded(seed=3)
    _without_logits_to_keep(old.model)
    with torch.no_grad():
        full = new.model(input_ids=torch.tensor([ids]), use_cache=False).logits[0, -1].double()
    for lm in (new, old):
        got = next_logits(lm.model, ids)
        assert torch.allclose(got, full, atol=1e-5), type(lm.model).__name__
        assert greedy_token(lm, ids).id == int(full.argmax())
    np.testing.assert_allclose(attention_relevance(old.model, ids), attention_relevance(new.model, ids), atol=1e-6)
