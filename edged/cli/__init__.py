"""The ``edged`` command: one module per command group over the daemon client."""

from edged.cli.main import main

__all__ = ["main"]
