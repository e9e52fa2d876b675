"""``python -m failtrace``: the same as the ``failtrace`` command (and ``python -m failtrace.cli``)."""

from failtrace._launch import main

main()
