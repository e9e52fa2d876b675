"""Chat templates: turn messages into token ids, with thinking mode off unless asked for."""

from __future__ import annotations

from typing import Any

from failtrace.errors import FailtraceError


def chat_messages(prompt: str | list[dict[str, str]], system: str | None = None) -> list[dict[str, str]]:
    """Normalise a prompt (a string or a list of ``{role, content}``) into chat messages."""
    if isinstance(prompt, str):
        msgs = [{"role": "user", "content": prompt}]
    else:
        msgs = [dict(m) for m in prompt]
        for i, m in enumerate(msgs):
            if "role" not in m or "content" not in m:
                raise FailtraceError(f"chat message {i} must have 'role' and 'content' keys, got {sorted(m)}")
    if system is not None:
        msgs = [{"role": "system", "content": system}, *msgs]
    return msgs


def apply_chat_template(
    tokenizer: Any,
    prompt: str | list[dict[str, str]],
    thinking: bool = False,
    add_generation_prompt: bool = True,
) -> list[int]:
    """Token ids of ``prompt`` rendered with the tokenizer's chat template.

    Templates that know ``enable_thinking`` (Qwen3 and others) get it explicitly; thinking is off by default so
    the model answers directly, as in the paper's collection runs.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise FailtraceError("this tokenizer has no chat template; pass the prompt as plain text (drop --chat)")
    from jinja2 import TemplateError

    msgs = chat_messages(prompt)
    try:
        out = tokenizer.apply_chat_template(
            msgs, add_generation_prompt=add_generation_prompt, tokenize=True, enable_thinking=thinking
        )
    except TemplateError as exc:  # the template's own refusal (``raise_exception``: a role it does not know, ...)
        roles = ", ".join(dict.fromkeys(m["role"] for m in msgs))
        raise FailtraceError(f"the model's chat template refused the messages (roles {roles}): "
                             f"{str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__}") from None
    if hasattr(out, "keys") and "input_ids" in out:  # transformers 5 returns a BatchEncoding
        out = out["input_ids"]
    if out and isinstance(out[0], list):
        out = out[0]
    return [int(t) for t in out]


def has_thinking_mode(tokenizer: Any) -> bool:
    """Whether the tokenizer's chat template reads ``enable_thinking`` (Qwen3 and others)."""
    template = getattr(tokenizer, "chat_template", None)
    texts = template.values() if isinstance(template, dict) else [template or ""]
    return any("enable_thinking" in str(t) for t in texts)


def check_thinking(thinking_mode: bool, model: str, thinking: bool) -> None:
    """``--thinking`` on a model whose chat template never reads ``enable_thinking`` would change nothing but the
    run's id (a second, identical run): refused. ``thinking_mode``: :func:`has_thinking_mode` of its tokenizer."""
    if thinking and not thinking_mode:
        raise FailtraceError(f"--thinking: {model}'s chat template has no thinking mode (it never reads "
                             "enable_thinking); leave --thinking out")
