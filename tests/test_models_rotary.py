"""Dynamic-NTK rotary scaling through load_model: the same input gives the same output whatever ran before.

transformers keeps the frequencies of the longest sequence a dynamic rotary module has seen; a model failtrace loads
forgets them before every call (models/rotary.py). The reference is a freshly loaded plain transformers model.
"""

from __future__ import annotations

from pathlib import Path

import torch

from failtrace.models.loading import load_model
from failtrace_testkit.tiny import tiny_model
from failtrace_testkit.toy import toy_tokenizer


def _folder(tmp_path: Path, scaling: dict | None) -> Path:
    folder = tmp_path / "m"
    tiny_model("llama", rope=(500.0, 2e3), rope_scaling=scaling, max_positions=8).save_pretrained(folder)
    toy_tokenizer().save_pretrained(folder)
    return folder


def _logits(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0]


def test_a_loaded_dynamic_ntk_model_forgets_longer_inputs(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    folder = _folder(tmp_path, {"rope_type": "dynamic", "factor": 4.0})
    short, longer = list(range(3, 15)), list(range(3, 43))
    fresh = _logits(AutoModelForCausalLM.from_pretrained(folder).eval(), short)
    plain = AutoModelForCausalLM.from_pretrained(folder).eval()
    _logits(plain, longer)
    assert (_logits(plain, short) - fresh).abs().max() > 1e-2  # plain transformers remembers the 40 positions
    lm = load_model(str(folder), progress=False)
    _logits(lm.model, longer)
    assert torch.equal(_logits(lm.model, short), fresh)  # failtrace's model does not
    # incremental decoding with the cache: the last step's logits equal one full forward of a fresh model
    with torch.no_grad():
        out = lm.model(input_ids=torch.tensor([longer[:-1]]), use_cache=True)
        step = lm.model(input_ids=torch.tensor([longer[-1:]]), past_key_values=out.past_key_values,
                        use_cache=True).logits[0, -1]
        ref = AutoModelForCausalLM.from_pretrained(folder).eval()
        ref_out = ref(input_ids=torch.tensor([longer[:-1]]), use_cache=True)
        ref_step = ref(input_ids=torch.tensor([longer[-1:]]), past_key_values=ref_out.past_key_values,
                       use_cache=True).logits[0, -1]
    assert torch.equal(step, ref_step)


def test_other_rotary_types_get_no_hook(tmp_path: Path) -> None:
    from failtrace.models.rotary import forget_rotary_history

    lm = load_model(str(_folder(tmp_path, None)), progress=False)
    assert forget_rotary_history(lm.model) == 0
    assert not any(m._forward_pre_hooks for m in lm.model.modules())
