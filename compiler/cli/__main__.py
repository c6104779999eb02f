"""`python -m compiler.cli ...`: the same as `kiln ...`."""

from . import main

main()
