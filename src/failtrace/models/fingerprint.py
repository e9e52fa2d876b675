"""A model's content fingerprint: what cases are keyed by, never the path or name a user typed.

``model_fingerprint(lm)`` = SHA-256 over

* the weights: the bytes of the weight files the model was loaded from (``*.safetensors``, ``*.bin``, ``*.gguf``)
  when it came from a local folder, a ``.gguf`` file or the bundled cache, else every tensor of the in-memory state
  dict (name, dtype, shape, raw bytes). Hashing the file is fast (no tensor conversion) and each file's digest is
  cached, keyed by its resolved path, size, inode and modification time (ns), so an unchanged file is hashed once per
  machine, while a file replaced at the same path gets a new digest;
* the config (``config.to_dict()`` without ``_name_or_path`` and other entries that only say where or by which
  library version it was read);
* the tokenizer (its serialised vocabulary/merges/normaliser, special tokens and chat template), and
* the dtype the weights are computed in (the same file in bfloat16 gives other numbers).

Two models with the same fingerprint compute the same logits; a different file at the same path never shares one.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Any

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth")
# Config entries that say where/how a config was read, not what the model computes.
_VOLATILE_CONFIG_KEYS = {"_name_or_path", "transformers_version", "_commit_hash", "_attn_implementation_autoset",
                         "_attn_implementation_internal", "name_or_path"}
_CHUNK = 8 * 2**20
_memory_cache: dict[tuple[str, int, int, int], str] = {}
_lock = threading.Lock()


def _cache_file() -> Path:
    from failtrace.models.loading import cache_dir

    return cache_dir() / "fingerprints.json"


def _file_key(path: Path) -> tuple[str, int, int, int]:
    st = path.stat()
    return str(path.resolve()), int(st.st_size), int(st.st_ino), int(st.st_mtime_ns)


def _load_disk_cache() -> dict[str, str]:
    try:
        data = json.loads(_cache_file().read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _save_disk_cache(entries: dict[str, str]) -> None:
    """Best effort (a read-only cache folder only costs a re-hash next time); written atomically."""
    path = _cache_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(entries, sort_keys=True), encoding="utf-8")
        os.replace(tmp, path)
    except OSError:
        pass


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file's bytes, cached by (resolved path, size, inode, mtime in ns) in memory and on disk."""
    path = Path(path)
    key = _file_key(path)
    text_key = "|".join(str(k) for k in key)
    with _lock:
        if key in _memory_cache:
            return _memory_cache[key]
        disk = _load_disk_cache()
        if text_key in disk:
            _memory_cache[key] = disk[text_key]
            return disk[text_key]
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    digest = h.hexdigest()
    if _file_key(path) != key:  # the file changed while it was read: do not cache a digest of mixed content
        return digest
    with _lock:
        _memory_cache[key] = digest
        disk = {k: v for k, v in _load_disk_cache().items() if not k.startswith(key[0] + "|")}
        disk[text_key] = digest
        _save_disk_cache(disk)
    return digest


def weight_files(lm: Any) -> list[Path]:
    """The weight files ``lm`` was loaded from, or [] when they are unknown (hub cache, built in memory)."""
    candidates: list[Path] = []
    cache = (getattr(lm, "info", None) or {}).get("cache")
    if cache:
        candidates.append(Path(cache))
    source = str(getattr(lm, "source", "") or "")
    if source and not source.startswith("hub:") and ":" not in source[2:]:  # a local path (not "dist:file")
        candidates.append(Path(source))
    for cand in candidates:
        if cand.is_file() and cand.suffix.lower() in _WEIGHT_SUFFIXES:
            return [cand]
        if cand.is_dir():
            files = sorted(p for p in cand.iterdir() if p.is_file() and p.suffix.lower() in _WEIGHT_SUFFIXES)
            if files:
                return files
    return []


def tensors_digest(model: Any) -> str:
    """SHA-256 over every state-dict tensor (sorted names; dtype, shape and raw bytes)."""
    import torch

    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def config_digest(model: Any) -> str:
    """sha256 of the model's config without volatile keys: two loads of one model give one digest."""
    config = getattr(model, "config", None)
    d = config.to_dict() if config is not None and hasattr(config, "to_dict") else {}
    d = {k: v for k, v in d.items() if k not in _VOLATILE_CONFIG_KEYS}
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()


def tokenizer_digest(tokenizer: Any) -> str:
    """Hash of what the tokenizer does: its serialised model (fast tokenizers) or vocabulary, specials, template."""
    h = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        h.update(backend.to_str().encode())
    else:
        h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    extra = {"specials": sorted(str(t) for t in (getattr(tokenizer, "all_special_tokens", None) or [])),
             "chat_template": getattr(tokenizer, "chat_template", None),
             "added": sorted((int(i), str(t)) for i, t in (getattr(tokenizer, "added_tokens_decoder", None)
                                                           or {}).items())}
    h.update(json.dumps(extra, sort_keys=True, default=str).encode())
    return h.hexdigest()


def model_fingerprint(lm: Any) -> str:
    """Content fingerprint of a :class:`~failtrace.models.LoadedModel` (see the module docstring): 32 hex digits."""
    files = weight_files(lm)
    if files:
        weights = {"files": [file_digest(p) for p in files]}
    else:
        weights = {"tensors": tensors_digest(lm.model)}
    payload = {"weights": weights, "config": config_digest(lm.model), "tokenizer": tokenizer_digest(lm.tokenizer),
               "dtype": str(getattr(lm, "dtype", ""))}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:32]
