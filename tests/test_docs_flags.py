"""The README's CLI tour names every option of every command where it speaks of that command: an option added to a
command and never to the README is found here, not by a user reading ``--help``. A command's part of the README is
its tour line (with its continuation and comment lines), a ``#   command:`` line under another command, the notes
every pipeline stage shares at the top of the tour, and the prose paragraphs that name it. Hidden options (old
names kept as aliases) are not counted; ``--no-X`` switches count as named when either side is."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def _named(option: str, text: str) -> bool:
    return re.search(re.escape(option) + r"(?![\w-])", text) is not None


def command_scope(readme: str, command: str) -> str:
    """The README text that speaks of ``command`` (module docstring)."""
    lines, c = readme.splitlines(), re.escape(command)
    out = []
    for i, line in enumerate(lines):
        if re.match(rf"\s*failtrace {c}(\s|$)", line):  # a tour line, its continuation and comment lines
            out.append(line)
            j = i
            while j + 1 < len(lines) and (lines[j].rstrip().endswith("\\") or lines[j + 1].lstrip().startswith("#")):
                j += 1
                out.append(lines[j])
        elif re.match(rf"\s*#\s+{c}:", line):
            out.append(line)
    start = next(i for i, line in enumerate(lines) if line.startswith("# The pipeline"))
    out += lines[start:next(i for i in range(start, len(lines)) if lines[i].startswith("failtrace "))]
    prose = re.sub(r"```.*?```", "", readme, flags=re.S)
    out += [p for p in re.split(r"\n\s*\n", prose) if re.search(rf"(failtrace {c}\b|`{c}`)", p)]
    return "\n".join(out)


def missing_options(readme: str) -> list[str]:
    import typer

    from failtrace.cli import app

    missing = []
    for name, command in sorted(typer.main.get_command(app).commands.items()):
        if getattr(command, "hidden", False):
            continue
        scope = command_scope(readme, name)
        for param in command.params:
            opts = [o for o in [*param.opts, *getattr(param, "secondary_opts", [])] if o.startswith("--")]
            if opts and not getattr(param, "hidden", False) and not any(_named(o, scope) for o in opts):
                missing.append(f"{name} {opts[0]}")
    return missing


def test_every_visible_option_of_every_command_is_named_where_the_readme_speaks_of_it() -> None:
    text = README.read_text(encoding="utf-8")
    assert not missing_options(text), missing_options(text)
    assert all(_named(o, text) for o in ("--help", "--version"))


def test_an_option_named_only_under_another_command_is_missing() -> None:
    """The check reads each command's own part: ``--method`` under ``attribute`` does not document ``show
    --method``, and a prose paragraph about ``show`` does."""
    tour = "```\n# The pipeline\nfailtrace show --store s.duckdb\nfailtrace attribute --method M\n```\n"
    missing = missing_options(tour)
    assert "show --method" in missing and "attribute --method" not in missing and "show --store" not in missing
    assert "show --method" not in missing_options(tour + "\n`show` takes `--method M`.\n")
