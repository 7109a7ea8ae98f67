"""Sync batches: acceptance of good batches and rejection, with nothing produced, of attacks."""

from __future__ import annotations

import msgpack
import pytest
from nacl.signing import SigningKey

from attribution import canonical
from attribution.receipt import SignedReceipt
from sync.batch import (
    MAX_DEPTH,
    Batch,
    BatchError,
    Equivocation,
    VerifiedBatch,
    consistency_roots,
    verify_batch,
)
from sync.checkpoint import Checkpoint, SignedCheckpoint
from sync.merkle import EMPTY_ROOT, MemorySubtrees, consistency_proof
from tests.support.receipt_factory import key_from, make_chain, make_draft

KEY_A = key_from("batch-a")
KEY_B = key_from("batch-b")
ORIGIN = bytes(KEY_A.verify_key)
TS = 1_700_000_000_000


class Log:
    """An origin's log: real signed receipts, its Merkle store and signed checkpoints."""

    def __init__(self, key: SigningKey, receipts: list[SignedReceipt]) -> None:
        self.key = key
        self.receipts = receipts
        self.tree = MemorySubtrees([r.leaf for r in receipts])

    def checkpoint(self, size: int) -> SignedCheckpoint:
        sub = MemorySubtrees([r.leaf for r in self.receipts[:size]])
        return Checkpoint(bytes(self.key.verify_key), size, sub.root(), TS + size).sign(self.key)

    def batch(self, start: int, end: int, from_size: int = 0) -> Batch:
        proof = consistency_proof(from_size, end, self.tree) if from_size else []
        return Batch(bytes(self.key.verify_key), [r.raw for r in self.receipts[start:end]],
                     self.checkpoint(end), proof, from_size)


class Receiver:
    """What a receiver holds of one origin, updated only from a VerifiedBatch."""

    def __init__(self) -> None:
        self.tree = MemorySubtrees()
        self.raws: dict[int, bytes] = {}
        self.known: SignedCheckpoint | None = None

    def verify(self, batch: Batch, **kwargs: bool) -> VerifiedBatch:
        return verify_batch(batch, known=self.known, have_through=self.tree.size,
                            stored=self.tree, **kwargs)

    def store(self, verified: VerifiedBatch) -> None:
        for level, index, value in verified.subtree_rows:
            self.tree.rows[(level, index)] = value
        for seq, _leaf, raw in verified.new_receipts:
            assert seq == self.tree.size
            self.raws[seq] = raw
            self.tree.size += 1
        self.known = verified.checkpoint

    def ingest(self, batch: Batch) -> VerifiedBatch:
        verified = self.verify(batch)
        self.store(verified)
        return verified


@pytest.fixture(scope="module")
def log() -> Log:
    return Log(KEY_A, make_chain(KEY_A, 24))


def wire_round_trip(batch: Batch) -> Batch:
    decoded = Batch.decode(batch.encode())
    assert decoded == batch
    return decoded


def test_from_empty(log: Log) -> None:
    receiver = Receiver()
    verified = receiver.ingest(wire_round_trip(log.batch(0, 10)))
    assert [seq for seq, _, _ in verified.new_receipts] == list(range(10))
    assert [leaf for _, leaf, _ in verified.new_receipts] == [r.leaf for r in log.receipts[:10]]
    assert [raw for _, _, raw in verified.new_receipts] == [r.raw for r in log.receipts[:10]]
    assert receiver.tree.root() == log.checkpoint(10).checkpoint.root
    assert verified.origin == ORIGIN


def test_incremental_with_consistency(log: Log) -> None:
    receiver = Receiver()
    receiver.ingest(log.batch(0, 5))
    verified = receiver.ingest(wire_round_trip(log.batch(5, 13, from_size=5)))
    assert [seq for seq, _, _ in verified.new_receipts] == list(range(5, 13))
    receiver.ingest(log.batch(13, 24, from_size=13))
    assert receiver.tree.rows == log.tree.rows
    assert receiver.raws == {i: r.raw for i, r in enumerate(log.receipts)}


def test_overlapping_resend_is_deduped(log: Log) -> None:
    receiver = Receiver()
    receiver.ingest(log.batch(0, 8))
    verified = receiver.ingest(log.batch(3, 12, from_size=8))
    assert [seq for seq, _, _ in verified.new_receipts] == list(range(8, 12))
    # a pure re-send of what is held produces nothing new
    again = receiver.verify(log.batch(4, 12, from_size=12))
    assert again.new_receipts == [] and again.subtree_rows == []
    assert receiver.tree.size == 12 and len(receiver.raws) == 12


def test_checkpoint_only_and_empty_known(log: Log) -> None:
    receiver = Receiver()
    receiver.known = Checkpoint(ORIGIN, 0, EMPTY_ROOT, TS).sign(KEY_A)
    receiver.ingest(log.batch(0, 6))
    assert receiver.verify(log.batch(6, 6, from_size=6)).new_receipts == []


def test_check_signatures_path_accepts_and_rejects(log: Log) -> None:
    receiver = Receiver()
    assert len(receiver.verify(log.batch(0, 7), check_signatures=True).new_receipts) == 7
    raws = [r.raw for r in log.receipts[:7]]
    raws[2] = raws[2][:-1] + bytes([raws[2][-1] ^ 1])  # flip a signature bit
    bad = Batch(ORIGIN, raws, log.checkpoint(7))
    with pytest.raises(BatchError, match="invalid receipt"):
        receiver.verify(bad, check_signatures=True)


def assert_rejected(receiver: Receiver, batch: Batch, match: str | None = None) -> BatchError:
    before = (dict(receiver.tree.rows), receiver.tree.size, dict(receiver.raws), receiver.known)
    with pytest.raises(BatchError, match=match) as info:
        receiver.ingest(batch)
    assert (receiver.tree.rows, receiver.tree.size, receiver.raws, receiver.known) == before
    return info.value


def held(log: Log, size: int) -> Receiver:
    receiver = Receiver()
    receiver.ingest(log.batch(0, size))
    return receiver


def test_forged_checkpoint_signature(log: Log) -> None:
    good = log.batch(0, 6)
    sig = bytes([good.checkpoint.sig[0] ^ 1]) + good.checkpoint.sig[1:]
    forged = Batch(ORIGIN, good.receipts, SignedCheckpoint(good.checkpoint.checkpoint, sig))
    assert_rejected(Receiver(), forged, "signature")
    # a checkpoint signed by another key, claiming A's origin
    cp = good.checkpoint.checkpoint
    by_b = SignedCheckpoint(cp, KEY_B.sign(cp.signing_bytes()).signature)
    assert_rejected(Receiver(), Batch(ORIGIN, good.receipts, by_b), "signature")


@pytest.mark.parametrize("position", [0, 7, 50, 150, -1])
def test_tampered_receipt_byte(log: Log, position: int) -> None:
    receiver = held(log, 4)
    good = log.batch(4, 10, from_size=4)
    raws = list(good.receipts)
    raw = bytearray(raws[3])
    raw[position] ^= 0x01
    raws[3] = bytes(raw)
    assert_rejected(receiver, Batch(ORIGIN, raws, good.checkpoint, good.proof, 4))


def test_gap(log: Log) -> None:
    receiver = held(log, 4)
    assert_rejected(receiver, log.batch(6, 10, from_size=4), "gap")
    good = log.batch(4, 10, from_size=4)
    missing = Batch(ORIGIN, good.receipts[:2] + good.receipts[3:], good.checkpoint, good.proof, 4)
    assert_rejected(receiver, missing)


def test_reordered(log: Log) -> None:
    receiver = held(log, 4)
    good = log.batch(4, 10, from_size=4)
    raws = list(good.receipts)
    raws[1], raws[2] = raws[2], raws[1]
    assert_rejected(receiver, Batch(ORIGIN, raws, good.checkpoint, good.proof, 4), "seq")


def test_receipts_not_ending_at_checkpoint(log: Log) -> None:
    receiver = held(log, 4)
    good = log.batch(4, 10, from_size=4)
    short = Batch(ORIGIN, good.receipts[:-1], good.checkpoint, good.proof, 4)
    assert_rejected(receiver, short)


def test_other_nodes_receipts_under_origin(log: Log) -> None:
    b_receipts = make_chain(KEY_B, 6)
    # B's receipts in a batch for A, with A's genuine checkpoint
    assert_rejected(Receiver(), Batch(ORIGIN, [r.raw for r in b_receipts], log.checkpoint(6)),
                    "origin")
    # B's receipts and B's checkpoint, labelled as A's batch
    b_log = Log(KEY_B, b_receipts)
    b_batch = b_log.batch(0, 6)
    assert_rejected(Receiver(), Batch(ORIGIN, b_batch.receipts, b_batch.checkpoint), "origin")
    # A batch for B whose receipts are A's, under B's checkpoint of its own log
    mixed = Batch(bytes(KEY_B.verify_key), [r.raw for r in log.receipts[:6]], b_batch.checkpoint)
    assert_rejected(Receiver(), mixed, "origin")


def test_broken_prev_chain_even_under_a_signed_root(log: Log) -> None:
    # The origin itself signed a checkpoint over a chain whose seq 3 does not link to seq 2.
    stray = make_draft(3).finalise(KEY_A, 3, bytes(32))
    bad_log = Log(KEY_A, log.receipts[:3] + [stray])
    assert_rejected(Receiver(), bad_log.batch(0, 4), "prev")
    # first receipt's prev must be the stored leaf of the seq before it
    receiver = held(log, 6)
    relinked = make_draft(6).finalise(KEY_A, 6, log.receipts[4].leaf)
    assert_rejected(receiver, Batch(ORIGIN, [relinked.raw], log.checkpoint(7),
                                    consistency_proof(6, 7, log.tree), 6), "prev")


def test_overlap_that_differs_from_stored(log: Log) -> None:
    receiver = held(log, 6)
    fork = forked_log(9)
    with pytest.raises(BatchError, match="differs from the stored"):
        verify_batch(fork.batch(1, 9), known=None, have_through=6, stored=receiver.tree)


def test_shrinking_checkpoint(log: Log) -> None:
    receiver = held(log, 12)
    old = log.batch(4, 8)
    assert_rejected(receiver, Batch(ORIGIN, old.receipts, old.checkpoint, [], 12), "shrinks")


def forked_log(size: int) -> Log:
    """Another log of the same key that agrees with ``log`` on nothing after seq 0."""
    first = make_chain(KEY_A, 1)
    rest = make_chain(KEY_A, size - 1, start_seq=1, prev=first[0].leaf)
    receipts = [first[0]]
    prev = first[0].leaf
    for seq in range(1, size):
        r = make_draft(seq + 1000).finalise(KEY_A, seq, prev)
        receipts.append(r)
        prev = r.leaf
    assert receipts[1].raw != rest[0].raw
    return Log(KEY_A, receipts)


def test_equivocating_checkpoint(log: Log) -> None:
    receiver = held(log, 5)  # 5 is not a power of two: the proof exposes the fork
    known = receiver.known
    fork = forked_log(12)
    evil = fork.batch(5, 12, from_size=5)
    error = assert_rejected(receiver, evil)
    assert isinstance(error, Equivocation)
    assert error.known == known and error.new == evil.checkpoint
    assert error.proof == evil.proof
    roots = consistency_roots(5, 12, known.checkpoint.root, error.proof)  # type: ignore[union-attr]
    assert roots is not None and roots[1] == evil.checkpoint.checkpoint.root
    assert roots[0] != known.checkpoint.root  # type: ignore[union-attr]


def test_equal_size_different_root_is_equivocation(log: Log) -> None:
    receiver = held(log, 8)
    fork = forked_log(8)
    error = assert_rejected(receiver, Batch(ORIGIN, [], fork.checkpoint(8), [], 8))
    assert isinstance(error, Equivocation)
    assert error.new == fork.checkpoint(8) and error.known == receiver.known


def test_garbage_proof_is_not_equivocation(log: Log) -> None:
    receiver = held(log, 5)
    good = log.batch(5, 12, from_size=5)
    garbage = [bytes(32)] * len(good.proof)
    error = assert_rejected(receiver, Batch(ORIGIN, good.receipts, good.checkpoint, garbage, 5),
                            "consistency")
    assert not isinstance(error, Equivocation)
    # a proof from a size other than the one the receiver knows
    assert_rejected(receiver, log.batch(5, 12, from_size=4), "from size")


def test_malformed_and_truncated(log: Log) -> None:
    data = log.batch(0, 6).encode()
    for bad in (b"", b"\xc1", b"\x80", b"garbage", data[:-1], data[: len(data) // 2],
                data + b"\x00", msgpack.packb([1, 2, 3]), msgpack.packb({"v": 1})):
        with pytest.raises(BatchError):
            Batch.decode(bad)
    fields = canonical.decode(data)
    for key, value in (("v", 2), ("origin", b"x"), ("from", -1), ("receipts", [b""]),
                       ("receipts", "x"), ("proof", [b"short"]), ("checkpoint", b"\x80"),
                       ("checkpoint", 5), ("from", True)):
        with pytest.raises(BatchError):
            Batch.decode(canonical.encode({**fields, key: value}))
    # not canonical: keys out of order
    unsorted = msgpack.packb(dict(reversed(list(fields.items()))), use_bin_type=True)
    with pytest.raises(BatchError, match="canonical"):
        Batch.decode(unsorted)


def test_oversized(log: Log) -> None:
    batch = log.batch(0, 24)
    data = batch.encode()
    with pytest.raises(BatchError, match="exceeds"):
        Batch.decode(data, max_bytes=len(data) - 1)
    assert Batch.decode(data, max_bytes=len(data)) == batch
    with pytest.raises(BatchError):
        Batch.decode(data, max_receipts=23)
    huge = canonical.encode({**canonical.decode(data), "receipts": [b"x" * (65 * 1024)]})
    with pytest.raises(BatchError):
        Batch.decode(huge)


@pytest.mark.parametrize("depth", [MAX_DEPTH, 100, 100_000])
def test_deeply_nested(log: Log, depth: int) -> None:
    nested = b"\x91" * depth + b"\xc0"  # [[[...[nil]...]]]
    with pytest.raises(BatchError):
        Batch.decode(nested)
    fields = canonical.decode(log.batch(0, 3).encode())
    packed = msgpack.packb({**fields, "receipts": []}, use_bin_type=True)
    # splice a deep structure in as the receipts list
    inner = b"\x91" * depth + b"\xc4\x01x"
    body = packed.replace(b"\xa8receipts\x90", b"\xa8receipts" + inner)
    assert body != packed
    with pytest.raises(BatchError):
        Batch.decode(body)
