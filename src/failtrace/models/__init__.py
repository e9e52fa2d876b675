"""Model loading: hub ids, local folders, GGUF files and the bundled default; chat templates with thinking off."""

from failtrace.models.chat import apply_chat_template, chat_messages
from failtrace.models.loading import DEFAULT_MODEL, LoadedModel, bundled_gguf_path, load_model

__all__ = ["DEFAULT_MODEL", "LoadedModel", "apply_chat_template", "bundled_gguf_path", "chat_messages", "load_model"]
