"""Subcommands of the ``sparsezip`` console script (see ``sparsezip.cli``)."""
