"""edged: the daemon (app factory, HTTP API, CLI, config, ledger, scheduler, security)."""

__version__ = "0.1.0"
