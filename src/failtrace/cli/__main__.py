"""``python -m failtrace.cli``: the same as the ``failtrace`` command."""

from failtrace.cli import _entry

_entry()
