"""``python -m failtrace.cli``: the same as the ``failtrace`` command."""

from failtrace._launch import main

main()
