"""Import jaxmarl without its side effects on the standard streams."""

import sys
from unittest import mock

# Importing jaxmarl prints a notice about optional submodules, and its MABrax module swaps
# sys.stdout / sys.stderr for /dev/null and then "restores" them to the interpreter's original
# streams, dropping any redirection in place (pytest's capture, a caller's redirect_stdout).
# Import it quietly and put the streams back as they were.
_streams = sys.stdout, sys.stderr
try:
    with mock.patch("builtins.print"):
        import jaxmarl  # noqa: F401
finally:
    sys.stdout, sys.stderr = _streams
del _streams
