"""User-facing errors.

Every error failtrace raises on bad input is a :class:`FailtraceError`: the CLI prints its message on one line and
exits non-zero, without a traceback. Messages name the bad input and say what would be valid.
"""

from __future__ import annotations

import errno
import os
import re


class FailtraceError(Exception):
    """An error caused by the user's input or environment, with a message meant for people."""


class UnsupportedModelError(FailtraceError):
    """The model's architecture cannot be patched with the LRP rules safely."""

    SUPPORTED = ("gated-MLP decoders whose attention uses the transformers registry (Llama, Qwen2/3, Mistral, "
                 "OLMo-2/3, Gemma-2/3)")

    def __init__(self, reason: str) -> None:
        super().__init__(f"{reason}; this architecture is not supported (supported: {self.SUPPORTED})")


class ModelNotFoundError(FailtraceError):
    """The model could not be found locally and the hub could not be reached."""


class TokenizationError(FailtraceError):
    """A target or contrast string does not encode to exactly one token, or an id is out of range."""


#: Exit codes of the ``failtrace`` command (documented in docs/ERRORS.md).
EXIT_OK = 0
EXIT_BAD_INPUT = 2  # a FailtraceError or a bad command line: one ``error: ...`` line on stderr
EXIT_INTERNAL = 70  # an unexpected exception (a bug): one line on stderr, the traceback in a log file (EX_SOFTWARE)
EXIT_INTERRUPTED = 130  # Ctrl-C


LONGEST_WORD = 400  # characters of one unbroken word (an id, a path) an error line repeats whole


def one_line(message: str) -> str:
    """``message`` with its lines joined, so the CLI's ``error: ...`` is always exactly one line; an unbroken word
    longer than :data:`LONGEST_WORD` (a 20,000-character ``--item`` id was echoed whole, in several messages) is
    cut, its length said."""
    joined = " ".join(part.strip() for part in str(message).splitlines() if part.strip())
    return re.sub(r"\S{%d,}" % (LONGEST_WORD + 1),
                  lambda m: f"{m.group(0)[:80]}… ({len(m.group(0)):,} characters)", joined)


_NAMED_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EPERM, errno.EACCES)


def errno_named(exc: BaseException) -> int | None:
    """The errno of ``exc``, or the one whose text its message quotes (DuckDB's errors, and failtrace's lines quoting
    them, carry none): a full disk or quota, a read-only file system, a refused write; None for any other."""
    if isinstance(exc, OSError) and exc.errno is not None:
        return exc.errno
    text = str(exc).lower()
    return next((code for code in _NAMED_ERRNOS if os.strerror(code).lower() in text), None)


def is_disk_full(exc: BaseException) -> bool:
    """ENOSPC/EDQUOT, from Python or named in a message: the disk, not the data, is at fault."""
    return errno_named(exc) in (errno.ENOSPC, errno.EDQUOT)
