"""``python -m specc.cli`` (also what ``torchrun -m specc.cli train ...`` runs in each worker)."""

from __future__ import annotations

from specc.cli import main

if __name__ == "__main__":
    main()
