"""``python -m specc.cli ...`` (also what torchrun launches)."""

from specc.cli import main

main()
