"""Per-peer sync status: progress, outcomes and exponential backoff, by peer URL.

Read by ``GET /api/sync/status`` and the sync metrics; written by the client (receipts
moved, batch by batch) and by the rounds (outcomes and backoff)."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

MAX_BACKOFF_S = 300.0


@dataclass
class PeerState:
    url: str
    failures: int = 0
    next_attempt: float = 0.0
    last_ok: float | None = None
    last_error: str | None = None
    received: int = 0
    key: bytes | None = None  # the peer's key, once it proved it (hello)
    exchanges: int = 0  # exchanges attempted, for metrics (``failures`` resets on success)
    failed_exchanges: int = 0


class PeerStatus:
    """The :class:`PeerState` of every peer (and fleet manager) this node talked to."""

    def __init__(self) -> None:
        self.states: dict[str, PeerState] = {}

    def state(self, url: str) -> PeerState:
        """The state of the peer at ``url``, created on first use."""
        return self.states.setdefault(url, PeerState(url))

    def due(self, urls: Iterable[str], *, force: bool = False) -> list[PeerState]:
        """The states of ``urls`` (once each) whose backoff is over (all with ``force``),
        those that failed least first, so stuck peers queue behind the others."""
        now = time.monotonic()
        due = [state for state in (self.state(url) for url in dict.fromkeys(urls))
               if force or now >= state.next_attempt]
        due.sort(key=lambda state: state.failures)
        return due

    @staticmethod
    def record_ok(state: PeerState) -> None:
        """A complete exchange: no more backoff."""
        state.failures, state.next_attempt = 0, 0.0
        state.last_ok, state.last_error = time.time(), None

    @staticmethod
    def record_cut_short(state: PeerState, error: str) -> None:
        """An exchange cut short after progress: no backoff, the next round goes on."""
        state.failures, state.next_attempt = 0, 0.0
        state.last_error = error

    @staticmethod
    def record_failure(state: PeerState, error: str, interval_s: float) -> None:
        """A failed exchange: back off ``interval_s * 2**failures``, at most
        :data:`MAX_BACKOFF_S`."""
        state.failures += 1
        state.failed_exchanges += 1
        state.last_error = error
        delay = min(MAX_BACKOFF_S, interval_s * 2 ** state.failures)
        state.next_attempt = time.monotonic() + delay
