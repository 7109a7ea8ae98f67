"""Fee splits are exact (no unit created or lost) and payout proofs verify."""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from sync import merkle
from sync.settlement.payout import (
    PayoutError,
    PayoutTree,
    normalise_address,
    payout_leaf_data,
    split_fee,
    verify_payout,
)


@st.composite
def payee_lists(draw: st.DrawFn) -> list[list[object]]:
    count = draw(st.integers(1, 6))
    cuts = sorted(draw(st.lists(st.integers(0, 1_000_000), min_size=count - 1,
                                max_size=count - 1)))
    shares = [b - a for a, b in zip([0, *cuts], [*cuts, 1_000_000], strict=True)]
    return [[f"payee-{i}", "data", ppm] for i, ppm in enumerate(shares)]


@given(st.integers(0, 10**18), payee_lists())
@example(12_437_928_439_563_855, [["payee-0", "data", 23], ["payee-1", "data", 999_977]])
def test_a_split_sums_exactly_to_the_fee(fee: int, payees: list[list[object]]) -> None:
    split = split_fee(fee, payees)
    assert sum(units for _, units in split) == fee
    for (_, units), (_, _, ppm) in zip(split, payees, strict=True):
        floor = fee * ppm // 1_000_000  # type: ignore[operator]
        assert units in (floor, floor + 1)  # each share is its floor or its ceiling


def test_leftover_units_go_to_the_largest_remainders_then_in_order() -> None:
    assert split_fee(10, [["a", "owner", 333_333], ["b", "data", 333_333],
                          ["c", "operator", 333_334]]) == [("a", 3), ("b", 3), ("c", 4)]
    assert split_fee(1, [["a", "owner", 500_000], ["b", "data", 500_000]]) == [("a", 1),
                                                                                ("b", 0)]
    assert split_fee(0, [["a", "owner", 1_000_000]]) == [("a", 0)]


def test_addresses_and_leaves_are_checked() -> None:
    assert normalise_address("0x" + "aB" * 20) == bytes.fromhex("ab" * 20)
    for bad in ("national-archives", "0x1234", "0x" + "zz" * 20, "ab" * 21):
        with pytest.raises(PayoutError):
            normalise_address(bad)
    data = payout_leaf_data(3, bytes.fromhex("11" * 20), 5)
    assert len(data) == 96 and data[31] == 3 and data[44:64] == bytes.fromhex("11" * 20)
    with pytest.raises(PayoutError):
        payout_leaf_data(-1, bytes(20), 1)


@pytest.mark.parametrize("size", [1, 2, 3, 5, 8, 13])
def test_every_payee_proof_verifies_and_matches_the_reference_tree(size: int) -> None:
    amounts = {bytes([i + 1]) * 20: 100 * (i + 1) for i in range(size)}
    tree = PayoutTree(7, {**amounts, bytes(20): 0})  # zero amounts are left out
    assert tree.size == size and tree.total == sum(amounts.values())
    leaves = [merkle.leaf_hash(payout_leaf_data(7, payee, amount))
              for payee, amount in sorted(amounts.items())]
    assert tree.root == merkle.reference_root(leaves)
    for payee in amounts:
        proof = tree.proof(payee)
        verify_payout(proof, tree.root)
        wrong = type(proof)(proof.epoch, proof.payee, proof.amount + 1, proof.index,
                            proof.size, proof.proof)
        with pytest.raises(merkle.ProofError):
            verify_payout(wrong, tree.root)
