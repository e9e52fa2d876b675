"""One model folder for transformers 4.x and 5.x: what 5.x writes that 4.x would read differently.

failtrace converts models once into a cache that both the main environment (transformers 5) and the 4.57 overlay
read, and users bring folders saved by either version.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from failtrace.errors import FailtraceError


def portable_tokenizer_config(folder: Path) -> None:
    """Name the generic fast tokenizer class, which both transformers 4.x and 5.x can load (5.x writes its own
    ``TokenizersBackend``, unknown to 4.x), so one cache serves both."""
    cfg_path = folder / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg_path.write_text(json.dumps(cfg, indent=2))


def _transformers_version() -> str:
    import transformers

    return str(transformers.__version__)


def _transformers_major() -> int:
    return int(_transformers_version().split(".")[0])


def rope_settings_for_4x(config: Any) -> Any:
    """``config`` with its rotary settings where transformers 4.x looks for them (unchanged on 5.x).

    transformers 5 writes them as ``rope_parameters`` (``{"rope_theta", "rope_type", ...}``, or one such dict per
    attention type for Gemma-3); 4.x reads ``rope_theta``/``rope_scaling`` (Gemma-3: ``rope_local_base_freq`` for
    its sliding layers) and, finding none, silently uses its default θ = 10,000: SmolLM2's θ is 100,000 and
    Qwen2.5's 1,000,000, so every rotation, and every logit, would be another model's.
    """
    if _transformers_major() >= 5:
        return config
    for cfg in (config, getattr(config, "text_config", None)):
        params = getattr(cfg, "rope_parameters", None) if cfg is not None else None
        if not isinstance(params, dict):
            continue
        full = params.get("full_attention", params)
        if isinstance(full, dict) and "rope_theta" in full:
            cfg.rope_theta = float(full["rope_theta"])
            if full.get("rope_type", "default") != "default":
                cfg.rope_scaling = {k: v for k, v in full.items() if k != "rope_theta"}
        local = params.get("sliding_attention")
        if isinstance(local, dict) and "rope_theta" in local:
            if "gemma" in str(getattr(cfg, "model_type", "")):  # 4.x's Gemma-3 has a θ of its own for them
                cfg.rope_local_base_freq = float(local["rope_theta"])
            elif local != full:  # e.g. OLMo-3 on 4.x: its sliding layers can only use the full layers' rotation
                raise FailtraceError(
                    f"this {getattr(cfg, 'model_type', 'model')} config rotates its sliding-window layers "
                    f"differently from its full-attention layers ({local} vs {full}), which transformers "
                    f"{_transformers_version()} cannot represent; use transformers 5")
    return config


def load_pretrained(source: str, dtype: Any, revision: str | None = None) -> tuple[Any, Any]:
    """``from_pretrained`` of model and tokenizer from a folder or hub id, with the config read portably."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = rope_settings_for_4x(AutoConfig.from_pretrained(source, revision=revision))
    extra: dict[str, Any] = {}
    if _transformers_major() < 5 and getattr(config, "attn_logit_softcapping", None):
        # 4.x defaults to SDPA, which drops attention soft-capping (Gemma-2): the plain forward would be another
        # model's than the relevance pass's eager, soft-capped one
        extra["attn_implementation"] = "eager"
    model = AutoModelForCausalLM.from_pretrained(source, config=config, dtype=dtype, revision=revision, **extra)
    return model, AutoTokenizer.from_pretrained(source, revision=revision)
