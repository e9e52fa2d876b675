"""Options shared by the commands that explain one next-token decision (``attribute``, ``graph``)."""

from __future__ import annotations

import typer

PROMPT = typer.Option(..., "--prompt", "-p", help="Prompt text (or the user message with --chat).")
TARGET = typer.Option(None, "--target", "-t",
                      help="Target (wrong) token: one-token string or '#ID'. Default: the model's own next token.")
CONTRAST = typer.Option(None, "--contrast", "-c", help="Contrast (right) token: one-token string or '#ID'.")
MODEL = typer.Option(None, "--model", "-m",
                     help="Registry name (failtrace models), .gguf file, local folder, hub id; default smollm2-135m-instruct.")
CHAT = typer.Option(False, "--chat", help="Wrap the prompt in the model's chat template.")
ANSWER_PREFIX = typer.Option(None, "--answer-prefix", help="The model's own output before the explained token.")
