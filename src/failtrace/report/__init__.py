"""The HTML report of a failure study (built on :mod:`failtrace.views`)."""
