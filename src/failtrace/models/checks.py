"""Checks that run before a model is loaded, so a bad device, file or name fails in a second with its name.

They stand apart from :mod:`failtrace.models.loading` (which does the loading) and import nothing heavy at module
level; ``check_device`` imports torch when called.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from failtrace.errors import FailtraceError, ModelNotFoundError

DEFAULT_MODEL = "smollm2-135m-instruct"


def check_device(device: str, here: bool = True) -> str:
    """``device`` names a torch device this machine has (cpu, cuda, cuda:N, mps); else a FailtraceError saying why.

    Called before anything is loaded, so ``--device cuda`` on a CPU-only torch fails in a second, not after loading.
    ``here=False`` (the work runs on another cluster's nodes): only whether it names a supported kind of device.
    """
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise FailtraceError(f"device {device!r} is not a torch device; use cpu, cuda, cuda:N or mps") from None
    if dev.type not in ("cpu", "cuda", "mps"):
        raise FailtraceError(f"device {device!r} is not supported; use cpu, cuda, cuda:N or mps")
    if not here:
        return device
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = ("this torch build has no CUDA support" if torch.version.cuda is None
                   else "no CUDA GPU is visible to this process")
            raise FailtraceError(f"device {device!r}: {why} (torch {torch.__version__}); use --device cpu")
        n = torch.cuda.device_count()
        if dev.index is not None and dev.index >= n:
            raise FailtraceError(f"device {device!r}: this machine has {n} CUDA device(s); valid: "
                                 + ", ".join(f"cuda:{i}" for i in range(n)))
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise FailtraceError(f"device {device!r}: MPS (Apple GPU) is not available here; use --device cpu")
    return device


_GGUF_MAGIC = b"GGUF"
_GGUF_VERSIONS = (2, 3)


def check_gguf_header(path: Path) -> None:
    """The file starts like a GGUF model (magic ``GGUF``, format version 2 or 3, then two 64-bit counts).

    Checked by hand (24 bytes) because a wrong file otherwise fails deep inside transformers' GGUF reader.
    """
    import struct

    try:
        with path.open("rb") as fh:
            head = fh.read(24)
    except OSError as exc:
        raise ModelNotFoundError(f"cannot read GGUF file {path}: {exc.strerror or exc}") from None
    if head[:4] != _GGUF_MAGIC:
        raise FailtraceError(f"{path} is not a GGUF model file (it starts with {head[:4]!r}, not b'GGUF'); pass a "
                             f".gguf file, a Hugging Face model folder, or a hub id")
    if len(head) < 24:
        raise FailtraceError(f"{path} is a truncated GGUF file ({len(head)} bytes); download it again")
    version = struct.unpack("<I", head[4:8])[0]
    if version not in _GGUF_VERSIONS:
        raise FailtraceError(f"{path} has GGUF format version {version}; readable versions: "
                             f"{', '.join(map(str, _GGUF_VERSIONS))} (the file is damaged or from another format)")


def check_model_folder(path: Path) -> None:
    """A local model folder has a ``config.json`` holding a JSON object (else a message naming the file)."""
    import json

    config = path / "config.json"
    if not config.is_file():
        raise ModelNotFoundError(
            f"{path} is a folder but has no config.json; point at a Hugging Face model folder "
            f"(config.json + weights + tokenizer), a .gguf file, or use '{DEFAULT_MODEL}'"
        )
    try:
        value = json.loads(config.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise FailtraceError(f"{config} is not UTF-8 text; a model's config.json must be a JSON object") from None
    except json.JSONDecodeError as exc:
        raise FailtraceError(f"{config} is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}); "
                             f"a model's config.json must be a JSON object") from None
    except OSError as exc:
        raise FailtraceError(f"cannot read {config}: {exc.strerror or exc}") from None
    if not isinstance(value, dict):
        raise FailtraceError(f"{config} holds a JSON {type(value).__name__}, not an object; it must be a model config")


def explained(what: str, load: Any) -> Any:
    """Run ``load()``; a failure of the third-party loader on the user's files becomes one FailtraceError line.

    transformers, tokenizers, safetensors and gguf raise many exception types for a damaged or foreign file; which
    one is not useful to the user, the file and the reason are. Running out of memory is not the file's fault and
    passes through unchanged.
    """
    try:
        return load()
    except FailtraceError:
        raise
    except Exception as exc:  # noqa: BLE001 - see the docstring
        if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
            raise
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise FailtraceError(f"cannot load {what}: {type(exc).__name__}: {first}") from exc


def check_hub_name(name: str) -> None:
    """Before asking the hub for ``name``: a missing local path is named as such, an unreachable hub fails fast."""
    from failtrace.hub import hub_reachable, offline_mode

    if name.startswith(("/", "./", "../", "~", ".\\")) or name.count("/") > 1 or (os.sep != "/" and os.sep in name):
        raise ModelNotFoundError(f"no such file or folder: {name}; pass an existing model folder, a .gguf file, a "
                                 f"hub id such as HuggingFaceTB/SmolLM2-135M-Instruct, or '{DEFAULT_MODEL}'")
    if not offline_mode() and not hub_reachable():
        raise ModelNotFoundError(
            f"cannot load model {name!r}: it is not a local folder or .gguf file{registry_hint(name)}, and the "
            f"Hugging Face hub cannot be reached to download it. Download it where the hub is reachable and pass the "
            f"local folder (--model /path/to/folder), pass a .gguf file, use the bundled '{DEFAULT_MODEL}', or set "
            f"HF_HUB_OFFLINE=1 to use a copy already in the Hugging Face cache."
        )


def registry_hint(name: str) -> str:
    """For a name without an owner (``smollm2``, not ``org/model``): the registry names, the closest first."""
    import difflib

    from failtrace.models.registry import REGISTRY

    if "/" in name:
        return ""
    close = difflib.get_close_matches(name.lower(), list(REGISTRY), n=1, cutoff=0.5)
    return (f" (did you mean the registry model '{close[0]}'?" if close else " (nor a registry name:") + \
        f" `failtrace models` lists {', '.join(REGISTRY)})"


def check_model_name(name: str) -> None:
    """Everything :func:`failtrace.models.loading.load_model` checks about ``name`` before loading weights: a
    registry name (installed on first load), a readable ``.gguf`` file, a model folder with a config, or else a hub
    id the hub could serve. For commands that take several models, so a bad later one fails before the first is
    used (and before anything is written)."""
    from failtrace.models.registry import is_registry_name

    if not name or not name.strip():
        raise FailtraceError(f"a model name is empty; give a registry name such as '{DEFAULT_MODEL}', a model folder "
                             f"or a .gguf file")
    path = Path(name).expanduser()
    if name.lower() == DEFAULT_MODEL or (is_registry_name(name) and not path.exists()):
        return
    if name.lower().endswith(".gguf"):
        if not path.is_file():
            raise ModelNotFoundError(f"GGUF file not found: {name}")
        check_gguf_header(path)
    elif path.exists():
        if not path.is_dir():
            raise ModelNotFoundError(f"{name} is a file but not a .gguf file; pass a .gguf file, a Hugging Face "
                                     f"model folder (config.json + weights + tokenizer), or a hub id")
        check_model_folder(path)
    else:
        check_hub_name(name)
