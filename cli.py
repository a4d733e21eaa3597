"""Run specc from a checkout: ``python cli.py check specs/lenet.yaml``."""

from specc.cli import main

if __name__ == "__main__":
    main()
