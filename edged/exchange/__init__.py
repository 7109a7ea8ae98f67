"""Receipt exchange between trusted nodes: heads, pull, push, and the sync loop.

Modules: :mod:`~edged.exchange.server` (serving heads and batches, verified ingestion),
:mod:`~edged.exchange.client` (hello, pulling from peers, pushing to the fleet),
:mod:`~edged.exchange.rounds` (rounds with deadlines, the background loops),
:mod:`~edged.exchange.status` (per-peer state and backoff) and
:mod:`~edged.exchange.service` (the :class:`ExchangeService` facade over them).
"""

from __future__ import annotations

from edged.exchange.service import EXCHANGE, ExchangeService
from edged.exchange.status import MAX_BACKOFF_S, PeerState, PeerStatus

__all__ = ["EXCHANGE", "MAX_BACKOFF_S", "ExchangeService", "PeerState", "PeerStatus"]
