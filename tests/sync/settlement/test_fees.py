"""Fees of new and replacement transactions, and the setting that bounds them."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from edged.fleet.settle import Settler
from edged.settings import Settings
from sync.settlement.errors import FeeLimitReached
from sync.settlement.fees import DEFAULT_MAX_FEE_PER_GAS, Fees, bump_fees, new_fees


@pytest.mark.parametrize(("offered", "base_fee", "suggested", "maximum", "expected"), [
    # +10%, rounded up, on cap and tip when the market asks no more
    (Fees(20, 10), 1, 1, 1000, Fees(22, 11)),
    (Fees(21, 11), 1, 1, 1000, Fees(24, 13)),
    # the base fee rose: the cap catches up at once (2 x base + tip)
    (Fees(20, 10), 100, 1, 1000, Fees(211, 11)),
    # the node suggests a higher tip
    (Fees(20, 10), 1, 50, 1000, Fees(52, 50)),
    # capped at the maximum, the tip too
    (Fees(20, 10), 100, 1, 30, Fees(30, 11)),
    (Fees(20, 10), 1, 50, 23, Fees(23, 23)),
    # no room for +10% on the cap, or on the tip
    (Fees(20, 10), 100, 1, 21, None),
    (Fees(20, 19), 1, 1, 21, None),
    # legacy gas price
    (Fees(100), None, 50, 1000, Fees(110)),
    (Fees(100), None, 500, 1000, Fees(500)),
    (Fees(100), None, 500, 120, Fees(120)),
    (Fees(100), None, 500, 109, None),
])
def test_bump_fees(offered: Fees, base_fee: int | None, suggested: int, maximum: int,
                   expected: Fees | None) -> None:
    bumped = bump_fees(offered, base_fee, suggested, maximum)
    assert bumped == expected
    if bumped is not None:  # what geth requires of a replacement, and never above the maximum
        assert bumped.max_fee * 100 >= offered.max_fee * 110 and bumped.max_fee <= maximum
        if offered.tip is not None:
            assert bumped.tip is not None and bumped.tip * 100 >= offered.tip * 110
            assert bumped.tip <= bumped.max_fee


def test_the_fleet_settings_set_the_maximum_fee() -> None:
    adapter = SimpleNamespace(max_fee_per_gas=1)
    Settler(None, Settings(chain_max_fee_gwei=1.5), adapter)  # type: ignore[arg-type]
    assert adapter.max_fee_per_gas == 1_500_000_000
    assert Settings().chain_max_fee_gwei * 10**9 == DEFAULT_MAX_FEE_PER_GAS


@pytest.mark.parametrize(("base_fee", "suggested", "maximum", "expected"), [
    # EIP-1559: cap 2 x base fee + the suggested tip
    (100, 7, 10_000, Fees(207, 7)),
    # capped at the maximum, and the tip not above the cap
    (100, 7, 150, Fees(150, 7)),
    (100, 300, 250, Fees(250, 250)),
    # the base fee itself at the maximum: still signed, at the maximum
    (100, 7, 100, Fees(100, 7)),
    # legacy: the gas price, which may equal the maximum
    (None, 40, 1000, Fees(40)),
    (None, 40, 40, Fees(40)),
])
def test_new_fees(base_fee: int | None, suggested: int, maximum: int, expected: Fees) -> None:
    assert new_fees(base_fee, suggested, maximum, "checkpoint 1") == expected


@pytest.mark.parametrize(("base_fee", "suggested", "kind"), [(101, 1, "base fee"),
                                                              (None, 101, "gas price")])
def test_new_fees_above_the_maximum_are_refused(base_fee: int | None, suggested: int,
                                                kind: str) -> None:
    with pytest.raises(FeeLimitReached) as caught:
        new_fees(base_fee, suggested, 100, "epoch 3")
    assert str(caught.value) == (f"epoch 3: the chain's {kind} is 101 wei per gas, above the "
                                 "configured maximum of 100 wei (chain_max_fee_gwei); nothing "
                                 "was sent")
