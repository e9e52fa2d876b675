"""The GGUF conversion's plain copy (``_dequantized_copy``): same function, shared memory, loadable after saving.

The copy is built on the meta device and takes the source's tensors; the independent reference is the source model
itself (a plain transformers model) and, after ``save_pretrained``, transformers' own ``from_pretrained``.
"""

from __future__ import annotations

import pytest
import torch

from failtrace.models.loading import _dequantized_copy
from failtrace_testkit.tiny import tiny_model


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3"])
def test_copy_is_the_same_model_without_a_second_set_of_weights(arch, tmp_path):
    from transformers import AutoModelForCausalLM

    src = tiny_model(arch, seed=3)
    ids = torch.randint(0, src.config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = src(input_ids=ids).logits
    plain = _dequantized_copy(src).eval()
    src_ptrs = {t.data_ptr() for t in src.parameters()}
    assert all(p.data_ptr() in src_ptrs for p in plain.parameters())  # shared, not copied
    assert not any(t.is_meta for t in [*plain.parameters(), *plain.buffers()])
    with torch.no_grad():
        got = plain(input_ids=ids).logits
    assert torch.equal(got, want)
    plain.save_pretrained(tmp_path)
    again = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(again(input_ids=ids).logits, want)


def test_converting_the_bundled_gguf_prints_no_progress_bars(tmp_path, capfd):
    """``--no-progress`` runs must not fill their logs with transformers' per-tensor bars: the GGUF converter calls
    tqdm directly, and saving the shards uses transformers' own bar; both are silenced, then restored."""
    import transformers.modeling_gguf_pytorch_utils as gguf_utils

    from failtrace.models.loading import _convert_to_cache, bundled_gguf_path, is_converted

    before = gguf_utils.tqdm
    target = _convert_to_cache(bundled_gguf_path(), tmp_path / "smollm2", progress=False)
    out, err = capfd.readouterr()
    assert is_converted(target)
    assert "Converting and de-quantizing" not in err + out
    assert "Writing model shards" not in err + out
    assert gguf_utils.tqdm is before
