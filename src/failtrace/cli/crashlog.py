"""Where an unexpected exception's traceback goes: a log file, so the terminal only ever shows one line.

The folder is ``$FAILTRACE_LOG_DIR`` if set, else ``<cache>/logs`` where ``<cache>`` is failtrace's user cache
(``$FAILTRACE_CACHE``, else the platform's cache dir, e.g. ``~/.cache/failtrace`` on Linux); if that cannot be
written, ``<tmp>/failtrace-logs`` (the system temp dir). The newest :data:`KEEP` logs are kept.
"""

from __future__ import annotations

import os
import platform
import sys
import tempfile
import traceback
from datetime import datetime, timezone
from pathlib import Path

KEEP = 50


def log_dirs() -> list[Path]:
    """Candidate folders for crash logs, in order of preference."""
    env = os.environ.get("FAILTRACE_LOG_DIR")
    if env:
        return [Path(env).expanduser(), Path(tempfile.gettempdir()) / "failtrace-logs"]
    dirs = []
    try:
        from failtrace.models.loading import cache_dir

        dirs.append(cache_dir() / "logs")
    except Exception:  # noqa: BLE001 - the crash logger must never crash; fall back to the temp dir
        pass
    dirs.append(Path(tempfile.gettempdir()) / "failtrace-logs")
    return dirs


def _report(exc: BaseException, argv: list[str] | None) -> str:
    try:
        from failtrace import __version__ as version
    except Exception:  # noqa: BLE001
        version = "unknown"
    head = [
        f"failtrace {version} crash report, {datetime.now(timezone.utc).isoformat(timespec='seconds')}",
        f"command: failtrace {' '.join(argv if argv is not None else sys.argv[1:])}",
        f"python {platform.python_version()} on {platform.platform()}",
        "",
    ]
    return "\n".join(head) + "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))


def write_crash_log(exc: BaseException, argv: list[str] | None = None) -> Path | None:
    """Write the traceback of ``exc`` (with the command line and versions) to a new log file; its path, or None."""
    text = _report(exc, argv)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    for folder in log_dirs():
        try:
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"crash-{stamp}-{os.getpid()}.log"
            # backslashreplace: an argument that is not UTF-8 (a Latin-1 file name) arrives as lone surrogates
            path.write_bytes(text.encode("utf-8", "backslashreplace"))
        except OSError:
            continue
        _prune(folder)
        return path
    return None


def _prune(folder: Path) -> None:
    """Keep the newest :data:`KEEP` crash logs in ``folder``."""
    try:
        logs = sorted(folder.glob("crash-*.log"), key=lambda p: p.stat().st_mtime, reverse=True)
        for old in logs[KEEP:]:
            old.unlink(missing_ok=True)
    except OSError:
        pass
