"""Payee shares: integer ppm, summing to exactly 10**6, deterministic."""

from __future__ import annotations

import random
from collections import Counter
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from attribution.payees import PPM, ROLES, Payee, Role, owner_payees, split_ppm

Weights = list[tuple[str, Role, int]]
roles: st.SearchStrategy[Role] = st.sampled_from(ROLES)
weights = st.lists(
    st.tuples(st.sampled_from(["alice", "bob", "carol", "dave", "é-ve"]), roles,
              st.integers(min_value=0, max_value=10**12)),
    min_size=1, max_size=12,
).filter(lambda items: any(weight for _, _, weight in items))


@given(weights)
def test_shares_sum_to_exactly_one_million(items: Weights) -> None:
    payees = split_ppm(items)
    assert sum(payee.ppm for payee in payees) == PPM
    assert all(payee.ppm > 0 for payee in payees)


@given(weights, st.randoms())
def test_deterministic_whatever_the_input_order(items: Weights, rnd: random.Random) -> None:
    shuffled = list(items)
    rnd.shuffle(shuffled)
    assert split_ppm(shuffled) == split_ppm(items)
    assert list(split_ppm(items)) == sorted(split_ppm(items))


@given(weights)
def test_duplicates_are_merged(items: Weights) -> None:
    payees = split_ppm(items)
    pairs = Counter((payee.payee_id, payee.role) for payee in payees)
    assert all(n == 1 for n in pairs.values())
    merged: Counter[tuple[str, Role]] = Counter()
    for payee_id, role, weight in items:
        merged[(payee_id, role)] += weight
    assert split_ppm([(pid, role, w) for (pid, role), w in merged.items()]) == payees


@given(weights)
def test_each_share_is_within_one_ppm_of_exact(items: Weights) -> None:
    merged: Counter[tuple[str, Role]] = Counter()
    for payee_id, role, weight in items:
        merged[(payee_id, role)] += weight
    total = sum(merged.values())
    shares = {(p.payee_id, p.role): p.ppm for p in split_ppm(items)}
    for key, weight in merged.items():
        exact = Fraction(weight * PPM, total)
        assert abs(shares.get(key, 0) - exact) < 1


def test_largest_remainder_ties_go_to_the_earlier_payee() -> None:
    assert split_ppm([("c", "data", 1), ("a", "data", 1), ("b", "data", 1)]) == (
        Payee("a", "data", 333_334), Payee("b", "data", 333_333), Payee("c", "data", 333_333))


def test_zero_weights_are_dropped() -> None:
    assert split_ppm([("a", "owner", 5), ("b", "data", 0)]) == (Payee("a", "owner", PPM),)


def test_same_id_in_two_roles_stays_two_payees() -> None:
    assert split_ppm([("a", "owner", 1), ("a", "data", 1)]) == (
        Payee("a", "data", 500_000), Payee("a", "owner", 500_000))


@pytest.mark.parametrize("items", [
    [("a", "owner", -1), ("b", "data", 5)],
    [("a", "boss", 1)],
    [("a", "owner", 0)],
    [],
])
def test_invalid_weights_are_refused(items: Weights) -> None:
    with pytest.raises(ValueError):
        split_ppm(items)


def test_owner_payees() -> None:
    assert owner_payees("o", "op", 100_000) == (
        Payee("o", "owner", 900_000), Payee("op", "operator", 100_000))
    assert owner_payees("o", "op", 0) == (Payee("o", "owner", PPM),)
    assert owner_payees("o", "op", PPM) == (Payee("op", "operator", PPM),)
    for bad in (-1, PPM + 1):
        with pytest.raises(ValueError):
            owner_payees("o", "op", bad)


def test_wire_form() -> None:
    assert Payee("a", "data", 7).to_wire() == ["a", "data", 7]
