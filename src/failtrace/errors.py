"""User-facing errors.

Every error failtrace raises on bad input is a :class:`FailtraceError`: the CLI prints its message on one line and
exits non-zero, without a traceback. Messages name the bad input and say what would be valid.
"""

from __future__ import annotations


class FailtraceError(Exception):
    """An error caused by the user's input or environment, with a message meant for people."""


class UnsupportedModelError(FailtraceError):
    """The model's architecture cannot be patched with the LRP rules safely."""

    SUPPORTED = "gated-MLP decoders whose attention uses the transformers registry (Llama, Qwen2/3, Mistral, OLMo-2/3, Gemma-2/3)"

    def __init__(self, reason: str) -> None:
        super().__init__(f"{reason}; this architecture is not supported (supported: {self.SUPPORTED})")


class ModelNotFoundError(FailtraceError):
    """The model could not be found locally and the hub could not be reached."""


class TokenizationError(FailtraceError):
    """A target or contrast string does not encode to exactly one token, or an id is out of range."""
