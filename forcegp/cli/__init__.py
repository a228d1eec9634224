"""The ``forcegp`` command line (click). Importing it imports no JAX: the commands import the
library when they run, so ``forcegp --help`` and ``forcegp <command> --help`` stay fast."""

from __future__ import annotations

from . import commands, train  # noqa: F401  (they register the commands on the group)
from .app import cli, main

__all__ = ["cli", "main"]
