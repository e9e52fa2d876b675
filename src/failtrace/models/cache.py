"""The failtrace cache directory (converted models, assembled GGUF files, installed chunk packages)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """Where converted models live: $FAILTRACE_CACHE, else the platform's user cache directory."""
    env = os.environ.get("FAILTRACE_CACHE")
    if env:
        return Path(env)
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("failtrace"))
