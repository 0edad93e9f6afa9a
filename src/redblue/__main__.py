"""`python -m redblue` runs the command line, exactly like the `redblue` script."""

from redblue.cli import entry

entry()
