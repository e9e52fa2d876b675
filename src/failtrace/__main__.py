"""``python -m failtrace``: the same as the ``failtrace`` command (and ``python -m failtrace.cli``)."""

from failtrace.cli import _entry

_entry()
