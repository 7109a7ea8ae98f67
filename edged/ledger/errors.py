"""The ledger's errors. Messages never name paths."""

from __future__ import annotations

from edged.errors import InternalError


class LedgerError(InternalError):
    """The ledger cannot be opened or written. Messages never name paths."""


class ForeignLedgerError(LedgerError):
    """The ledger holds receipts signed by another node key."""


class LedgerClosedError(LedgerError):
    """The ledger was closed; nothing more can be appended."""


class AppendFailedError(LedgerError):
    """The transaction holding this receipt failed; nothing of it was stored."""
