"""The README's CLI tour names every option a command offers: an option added to a command and never to the
README is found here, not by a user reading ``--help`` (hidden options, the old names kept as aliases, are not
counted). ``--no-X`` switches count as named when either side is."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def _named(option: str, text: str) -> bool:
    return re.search(re.escape(option) + r"(?![\w-])", text) is not None


def test_every_visible_option_of_every_command_is_named_in_the_readme() -> None:
    import typer

    from failtrace.cli import app

    text = README.read_text(encoding="utf-8")
    root = typer.main.get_command(app)
    missing = []
    for name, command in sorted(root.commands.items()):
        if getattr(command, "hidden", False):
            continue
        for param in command.params:
            opts = [o for o in [*param.opts, *getattr(param, "secondary_opts", [])] if o.startswith("--")]
            if opts and not getattr(param, "hidden", False) and not any(_named(o, text) for o in opts):
                missing.append(f"{name} {opts[0]}")
    assert len(root.commands) > 10 and not missing, missing
    assert all(_named(o, text) for o in ("--help", "--version"))
