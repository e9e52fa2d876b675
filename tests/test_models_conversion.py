"""The GGUF conversion's plain copy (``_dequantized_copy``): same function, shared memory, loadable after saving.

The copy is built on the meta device and takes the source's tensors; the independent reference is the source model
itself (a plain transformers model) and, after ``save_pretrained``, transformers' own ``from_pretrained``.
"""

from __future__ import annotations

from typing import Any

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


def _saved_as_transformers5(folder, arch: str, theta: float):
    """A tiny model folder whose config.json holds its rotary θ only as transformers 5 writes it
    (``rope_parameters``), whichever transformers saved it; with the toy tokenizer."""
    import json

    from failtrace.models.portable import portable_tokenizer_config
    from failtrace_testkit.toy import toy_tokenizer

    model = tiny_model(arch, seed=1)
    model.save_pretrained(folder)
    tok = toy_tokenizer()
    tok.save_pretrained(folder)
    portable_tokenizer_config(folder)
    cfg = json.loads((folder / "config.json").read_text())
    for key in ("rope_theta", "rope_scaling", "rope_parameters"):
        cfg.pop(key, None)
    cfg["rope_parameters"] = {"rope_theta": theta, "rope_type": "default"}
    (folder / "config.json").write_text(json.dumps(cfg))
    return model


@pytest.mark.tf4
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_a_folder_saved_by_transformers_5_keeps_its_rotary_theta(arch, tmp_path):
    """transformers 4.57 reads ``rope_theta``, not 5's ``rope_parameters``, and silently fell back to θ = 10,000:
    the bundled SmolLM2 (θ = 100,000) gave Δℓ 9.034 instead of 9.163 on the tf4 pass. The rotation frequencies of
    the loaded model against the formula 1 / θ^(2i/d)."""
    from failtrace.models.loading import load_model

    _saved_as_transformers5(tmp_path, arch, 100000.0)
    lm = load_model(str(tmp_path), progress=False)
    cfg = lm.model.config
    d = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    want = 1.0 / 100000.0 ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
    assert torch.allclose(lm.model.model.rotary_emb.inv_freq.double(), want, rtol=1e-6)


@pytest.mark.tf4
def test_gemma3_rotary_settings_per_attention_type_reach_4x_names():
    import transformers

    from failtrace.models.portable import rope_settings_for_4x

    cfg = transformers.Gemma3TextConfig(num_hidden_layers=2)
    params = {"full_attention": {"rope_theta": 1e6, "rope_type": "linear", "factor": 8.0},
              "sliding_attention": {"rope_theta": 1e4, "rope_type": "default"}}
    cfg.rope_parameters = params
    out = rope_settings_for_4x(cfg)
    assert out is cfg
    if int(transformers.__version__.split(".")[0]) >= 5:
        assert cfg.rope_parameters == params  # 5.x reads them as written: left alone
    else:
        assert (cfg.rope_theta, cfg.rope_local_base_freq) == (1e6, 1e4)
        assert cfg.rope_scaling == {"rope_type": "linear", "factor": 8.0}


@pytest.mark.tf4
def test_olmo3_with_its_own_sliding_rotation_is_refused_on_4x_not_misread():
    """4.57's OLMo-3 rotates its sliding layers like its full ones: a 5.x config with two θ cannot be read there."""
    import transformers

    from failtrace.errors import FailtraceError
    from failtrace.models.portable import rope_settings_for_4x

    def config(local: float) -> Any:
        cfg = transformers.Olmo3Config(num_hidden_layers=2)
        cfg.rope_parameters = {"full_attention": {"rope_theta": 5e5, "rope_type": "default"},
                               "sliding_attention": {"rope_theta": local, "rope_type": "default"}}
        return cfg

    same = rope_settings_for_4x(config(5e5))  # one θ for both: read as it is on either version
    if int(transformers.__version__.split(".")[0]) >= 5:
        assert rope_settings_for_4x(config(2e4)).rope_parameters["sliding_attention"]["rope_theta"] == 2e4
    else:
        assert same.rope_theta == 5e5
        with pytest.raises(FailtraceError, match="cannot represent"):
            rope_settings_for_4x(config(2e4))


@pytest.mark.tf4
def test_a_soft_capped_model_loads_with_the_capping_in_its_plain_forward(tmp_path):
    """transformers 4.57 ran Gemma-2 under SDPA, which drops attention soft-capping: the plain forward (cases' Δℓ)
    differed from the soft-capped relevance pass. Loaded through load_model, both agree on either version."""
    from failtrace.attribution.engine import relevance_pass
    from failtrace.models.loading import load_model
    from failtrace_testkit.toy import toy_tokenizer

    tiny_model("gemma2", seed=2).save_pretrained(tmp_path)
    toy_tokenizer().save_pretrained(tmp_path)
    lm = load_model(str(tmp_path), progress=False)
    ids = torch.randint(3, 128, (12,), generator=torch.Generator().manual_seed(3)).tolist()
    with torch.no_grad():
        logits = lm.model(input_ids=torch.tensor([ids]), use_cache=False).logits[0, -1]
    lrp = relevance_pass(lm.model, ids, lambda lo: lo[5] - lo[7])
    assert float(logits[5] - logits[7]) == pytest.approx(lrp.value, rel=1e-5)  # SDPA was ~6 % off
