"""Chain verification: every fault reported once, with the seq where it shows."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from nacl.signing import SigningKey

from attribution.chain import ChainVerifier, verify_chain
from attribution.receipt import ZERO_HASH, SignedReceipt
from tests.support.receipt_factory import digest, key_from, make_chain, make_draft

N = 10


@pytest.fixture
def node_key() -> SigningKey:
    return key_from("chain-tests")


@pytest.fixture
def chain(node_key: SigningKey) -> list[SignedReceipt]:
    return make_chain(node_key, N)


def raws(receipts: list[SignedReceipt]) -> list[bytes]:
    return [receipt.raw for receipt in receipts]


def test_good_chain_is_ok(node_key: SigningKey, chain: list[SignedReceipt]) -> None:
    report = verify_chain(raws(chain), node=bytes(node_key.verify_key))
    assert report.ok, report.problems
    assert report.count == N and report.next_seq == N
    assert report.head_leaf == chain[-1].leaf
    assert report.node == bytes(node_key.verify_key)
    assert report.problems == [] and report.problem_count == 0


def test_empty_chain_is_ok() -> None:
    report = verify_chain([])
    assert report.ok and report.count == 0
    assert report.head_leaf == ZERO_HASH and report.next_seq == 0 and report.node is None


def test_gap(chain: list[SignedReceipt]) -> None:
    report = verify_chain(raws(chain[:4] + chain[5:]))
    assert not report.ok
    assert report.problems == ["seq 5: gap, seq 4 missing"]


def test_gap_of_several(chain: list[SignedReceipt]) -> None:
    report = verify_chain(raws(chain[:2] + chain[6:]))
    assert report.problems == ["seq 6: gap, seqs 2..5 missing"]


def test_missing_first_receipt(chain: list[SignedReceipt]) -> None:
    assert verify_chain(raws(chain[1:])).problems == ["seq 1: gap, seq 0 missing"]


def test_duplicate(chain: list[SignedReceipt]) -> None:
    report = verify_chain(raws(chain[:4] + [chain[3]] + chain[4:]))
    assert len(report.problems) == 1
    assert report.problems[0].startswith("seq 3: duplicate")
    assert report.head_leaf == chain[-1].leaf


def test_reordered(chain: list[SignedReceipt]) -> None:
    swapped = chain[:3] + [chain[4], chain[3]] + chain[5:]
    report = verify_chain(raws(swapped))
    assert report.problems == ["seq 4: gap, seq 3 missing",
                               "seq 3: duplicate or out of order (expected seq 5)"]


def test_forged_prev(node_key: SigningKey, chain: list[SignedReceipt]) -> None:
    # The node itself signed a receipt 6 that does not link to receipt 5 (a fork).
    forged = make_chain(node_key, N - 6, start_seq=6, prev=digest("somewhere else"))
    report = verify_chain(raws(chain[:6] + forged))
    assert report.problems == ["seq 6: prev is not the leaf of seq 5"]


def test_forged_prev_in_first_receipt(node_key: SigningKey) -> None:
    chain = make_chain(node_key, 3, start_seq=5, prev=digest("x"))
    report = verify_chain(raws(chain), start_seq=5, start_prev=digest("y"))
    assert report.problems == ["seq 5: prev is not the leaf of seq 4"]


def test_foreign_node_key(chain: list[SignedReceipt]) -> None:
    impostor = make_draft(4).finalise(key_from("impostor"), 4, chain[3].leaf)
    report = verify_chain(raws(chain[:4] + [impostor] + chain[5:]))
    assert len(report.problems) == 1
    assert report.problems[0].startswith("seq 4: signed by node key")


def test_expected_node_key(chain: list[SignedReceipt]) -> None:
    other = bytes(key_from("someone else").verify_key)
    report = verify_chain(raws(chain), node=other)
    assert not report.ok
    assert report.problems[0].startswith("seq 0: signed by node key")
    assert report.problem_count == N


@pytest.mark.parametrize("position", [0, 1, 40, -1])
def test_tampered_byte(chain: list[SignedReceipt], position: int) -> None:
    tampered = bytearray(chain[6].raw)
    tampered[position] ^= 0x01
    report = verify_chain([*raws(chain[:6]), bytes(tampered), *raws(chain[7:])])
    assert len(report.problems) == 1
    assert report.problems[0].startswith("seq 6: invalid receipt")
    assert report.next_seq == N


def test_several_faults_each_reported_once(node_key: SigningKey,
                                           chain: list[SignedReceipt]) -> None:
    tampered = bytearray(chain[2].raw)
    tampered[-5] ^= 0x80
    sequence = [*raws(chain[:2]), bytes(tampered), *raws(chain[3:5]), chain[4].raw,
                *raws(chain[6:])]
    report = verify_chain(sequence)
    assert [p.split(":")[0] for p in report.problems] == ["seq 2", "seq 4", "seq 6"]


def test_streaming_in_pages_matches_one_pass(chain: list[SignedReceipt]) -> None:
    verifier = ChainVerifier()
    for start in range(0, N, 3):
        verifier.feed_all(raws(chain[start:start + 3]))
        partial = verifier.report()
        assert partial.ok and partial.head_leaf == chain[min(start + 3, N) - 1].leaf
    assert verifier.report() == verify_chain(raws(chain))


def test_resume_from_a_report(chain: list[SignedReceipt]) -> None:
    first = verify_chain(raws(chain[:4]))
    rest = verify_chain(raws(chain[4:]), node=first.node, start_seq=first.next_seq,
                        start_prev=first.head_leaf)
    assert rest.ok and rest.head_leaf == chain[-1].leaf
    wrong = verify_chain(raws(chain[4:]), start_seq=4, start_prev=chain[2].leaf)
    assert wrong.problems == ["seq 4: prev is not the leaf of seq 3"]


def test_consumes_a_generator_lazily(chain: list[SignedReceipt]) -> None:
    fed: list[int] = []

    def source() -> Iterator[bytes]:
        for index, receipt in enumerate(chain):
            fed.append(index)
            yield receipt.raw

    report = verify_chain(source())
    assert report.ok and fed == list(range(N))


def test_problems_are_capped_but_counted() -> None:
    report = verify_chain([b"junk"] * 50, max_problems=10)
    assert not report.ok
    assert len(report.problems) == 10 and report.problem_count == 50
    assert report.problems[0].startswith("seq 0: invalid receipt")
    assert report.problems[9].startswith("seq 9: invalid receipt")


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        ChainVerifier(node=b"short")
    with pytest.raises(ValueError):
        ChainVerifier(start_seq=-1)
    with pytest.raises(ValueError):
        ChainVerifier(start_prev=b"\x00")
