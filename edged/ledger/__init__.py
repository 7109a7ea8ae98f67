"""The node's receipt ledger: an append-only SQLite log of signed, chained receipts.

Every receipt is signed inside the transaction that stores it, because only that
transaction knows its ``seq`` and ``prev``. Only receipts are stored: commitments and
digests, never prompts or outputs.

Modules: :mod:`~edged.ledger.schema` (the file, its tables and connections),
:mod:`~edged.ledger.writer` (the writer thread and group commit),
:mod:`~edged.ledger.reads` (receipts, head, evidence), :mod:`~edged.ledger.checkpoints`
(checkpoints, roots and proofs) and :mod:`~edged.ledger.ledger` (the :class:`Ledger`
facade that composes them).
"""

from __future__ import annotations

from edged.ledger.errors import (
    AppendFailedError,
    ForeignLedgerError,
    LedgerClosedError,
    LedgerError,
)
from edged.ledger.ledger import LEDGER, Ledger
from edged.ledger.schema import EVIDENCE_TABLE, TABLE
from edged.ledger.writer import DEFAULT_MAX_BATCH

__all__ = [
    "DEFAULT_MAX_BATCH",
    "EVIDENCE_TABLE",
    "LEDGER",
    "TABLE",
    "AppendFailedError",
    "ForeignLedgerError",
    "Ledger",
    "LedgerClosedError",
    "LedgerError",
]
