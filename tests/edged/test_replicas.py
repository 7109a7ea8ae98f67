"""The replica store's one connection, shared by worker threads and the event loop: every
use holds the store's lock, so concurrent reads and writes neither fail nor see half of a
transaction."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from edged.devtools.simulated_node import SimulatedNode
from edged.replicas import ReplicaStore
from sync import merkle
from sync.checkpoint import SignedCheckpoint
from tests.support.receipt_factory import key_from

THREADS = 4
BATCHES = 12
PER_BATCH = 5


@pytest.fixture
def replicas(tmp_path: Path) -> Iterator[ReplicaStore]:
    store = ReplicaStore(tmp_path / "replicas.sqlite3")
    yield store
    store.close()


def _store_batch(replicas: ReplicaStore, node: SimulatedNode, start: int, end: int) -> int:
    receipts = [(seq, node._tree.rows[(0, seq)], node.raws[seq]) for seq in range(start, end)]
    rows = [(level, index, value) for (level, index), value in node._tree.rows.items()
            if level > 0 and (index + 1) << level <= end]
    return replicas.store(node.origin, receipts, rows, node.checkpoint(end))


def _run_together(workers: list[Callable[[], None]]) -> list[BaseException]:
    errors: list[BaseException] = []
    start = threading.Barrier(len(workers))

    def run(work: Callable[[], None]) -> None:
        try:
            start.wait(timeout=10)
            work()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(work,)) for work in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return errors


def test_threads_reading_and_writing_at_once(replicas: ReplicaStore) -> None:
    nodes = [SimulatedNode(key_from(f"origin-{i}")) for i in range(THREADS)]
    for node in nodes:
        node.append(BATCHES * PER_BATCH)
    done = threading.Event()

    def writer(node: SimulatedNode) -> Callable[[], None]:
        def write() -> None:
            for start in range(0, BATCHES * PER_BATCH, PER_BATCH):
                assert _store_batch(replicas, node, start, start + PER_BATCH) == PER_BATCH
            assert _store_batch(replicas, node, 0, PER_BATCH) == 0  # stored already
        return write

    def reader(node: SimulatedNode) -> Callable[[], None]:
        def read() -> None:
            while not done.is_set():
                size = replicas.size(node.origin)
                assert size % PER_BATCH == 0  # never half of a batch
                assert replicas.raw_range(node.origin, 0, size) == node.raws[:size]
                if size:
                    latest = replicas.latest_checkpoint(node.origin)
                    assert latest is not None and latest.checkpoint.size >= size
                    assert merkle.root(size, replicas.subtrees(node.origin)) \
                        == merkle.root(size, node._tree)
                    assert replicas.leaf(node.origin, size - 1) == node._tree.rows[(0, size - 1)]
                for head in replicas.heads():
                    assert head.checkpoint is not None
                    assert head.size >= head.checkpoint.checkpoint.size
                assert not replicas.is_frozen(node.origin)
                assert replicas.evidence() == []
        return read

    writers = [writer(node) for node in nodes]

    def write_all_then_stop() -> None:
        try:
            errors = _run_together(writers)
            assert errors == []
        finally:
            done.set()

    errors = _run_together([write_all_then_stop] + [reader(node) for node in nodes])
    assert errors == []
    for node in nodes:
        assert replicas.size(node.origin) == node.size
        assert replicas.raw_range(node.origin, 0, node.size) == node.raws
        assert [cp.checkpoint.size for cp in replicas.checkpoints(node.origin)] \
            == list(range(PER_BATCH, node.size + 1, PER_BATCH))
    assert len(replicas.heads()) == THREADS


class _FailingCheckpoint:
    """A checkpoint whose encoding fails slowly: the store's transaction rolls back."""

    def __init__(self, real: SignedCheckpoint, pause_s: float) -> None:
        self.checkpoint = real.checkpoint
        self.pause_s = pause_s

    def encode(self) -> bytes:
        time.sleep(self.pause_s)
        raise OSError("disk full")


def test_reads_never_see_a_transaction_that_rolls_back(replicas: ReplicaStore) -> None:
    """Merkle reads (``subtrees``, as verification and proofs use them) from other threads
    while a store is rolled back: none sees a receipt that was never committed."""
    node = SimulatedNode(key_from("a"))
    node.append(4)
    failing = _FailingCheckpoint(node.checkpoint(4), pause_s=0.01)
    done = threading.Event()
    seen: list[bytes] = []

    def write() -> None:
        try:
            for _ in range(30):
                with pytest.raises(OSError):
                    replicas.store(node.origin, [(seq, node._tree.rows[(0, seq)], node.raws[seq])
                                                 for seq in range(4)], [], failing)  # type: ignore[arg-type]
        finally:
            done.set()

    def read() -> None:
        reader = replicas.subtrees(node.origin)
        while not done.is_set():
            with contextlib.suppress(LookupError):
                seen.append(reader.subtree(0, 0))

    errors = _run_together([write, read, read, read])
    assert errors == []
    assert seen == []
    assert replicas.size(node.origin) == 0
    assert _store_batch(replicas, node, 0, 4) == 4  # the connection is usable afterwards
