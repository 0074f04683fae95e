"""Benchmarks and measurements beside the package, each a module run from the repository root:
``python -m scripts.<name> --help``."""
