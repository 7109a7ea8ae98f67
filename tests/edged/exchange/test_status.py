"""Per-peer sync status: which peers are due, and exponential backoff after failures."""

from __future__ import annotations

import time

from edged.exchange.status import MAX_BACKOFF_S, PeerStatus


def test_backoff_doubles_per_failure_up_to_the_cap() -> None:
    status = PeerStatus()
    state = status.state("http://peer")
    delays = []
    for _ in range(12):
        before = time.monotonic()
        status.record_failure(state, "ConnectError", interval_s=5.0)
        delays.append(state.next_attempt - before)
    assert [round(delay) for delay in delays[:5]] == [10, 20, 40, 80, 160]
    assert all(abs(delay - MAX_BACKOFF_S) < 1 for delay in delays[6:])
    assert (state.failures, state.failed_exchanges, state.last_error) == (
        12, 12, "ConnectError")


def test_a_success_ends_the_backoff_but_keeps_the_failure_count_for_metrics() -> None:
    status = PeerStatus()
    state = status.state("http://peer")
    status.record_failure(state, "ConnectError", interval_s=5.0)
    status.record_ok(state)
    assert (state.failures, state.next_attempt, state.last_error) == (0, 0.0, None)
    assert state.last_ok is not None and state.failed_exchanges == 1
    status.record_failure(state, "SyncRefused", interval_s=5.0)
    status.record_cut_short(state, "TimeoutError")
    assert (state.failures, state.next_attempt, state.last_error) == (0, 0.0, "TimeoutError")


def test_due_skips_backing_off_peers_unless_forced_and_puts_stuck_ones_last() -> None:
    status = PeerStatus()
    urls = ["http://a", "http://b", "http://c", "http://a"]
    status.record_failure(status.state("http://a"), "ConnectError", interval_s=60.0)
    status.state("http://b").failures = 3  # failing, but its backoff is over
    assert [state.url for state in status.due(urls)] == ["http://c", "http://b"]
    assert [state.url for state in status.due(urls, force=True)] == [
        "http://c", "http://a", "http://b"]
    assert status.state("http://a") is status.states["http://a"]
