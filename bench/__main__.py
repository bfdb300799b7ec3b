"""``python -m bench``: run every benchmark (see bench/README.md)."""

from bench.cli import main

main()
