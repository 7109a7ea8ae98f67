"""What the operator's transactions offer per gas: first fees, and replacements' fees.

A new transaction offers what the market asks now, never above the configured maximum
(``chain_max_fee_gwei``); a stuck one is replaced by the same call with fees raised by
:func:`bump_fees`: at least +10% on both fee cap and tip, which geth requires of a
replacement, never above the maximum. Pure functions of the numbers the node reports.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sync.settlement.errors import FeeLimitReached

__all__ = ["DEFAULT_MAX_FEE_PER_GAS", "GWEI", "Fees", "bump_fees", "highest_fees", "new_fees"]

GWEI = 10**9
DEFAULT_MAX_FEE_PER_GAS = 500 * GWEI  # the chain_max_fee_gwei setting's default


@dataclass(frozen=True)
class Fees:
    """What a transaction offers per gas, in wei: an EIP-1559 fee cap (``maxFeePerGas``) and
    tip (``maxPriorityFeePerGas``), or a legacy gas price (``max_fee``, with ``tip`` None)."""

    max_fee: int
    tip: int | None = None

    def fields(self) -> dict[str, int]:
        """The transaction fields."""
        if self.tip is None:
            return {"gasPrice": self.max_fee}
        return {"maxFeePerGas": self.max_fee, "maxPriorityFeePerGas": self.tip}


def new_fees(base_fee: int | None, suggested: int, max_fee_per_gas: int, what: str) -> Fees:
    """The fees of a new transaction given the market at the head: ``(base fee, suggested
    tip)``, or ``(None, gas price)`` on a chain without a base fee.

    EIP-1559: cap 2 x base fee + the suggested tip; legacy: the gas price. At most
    ``max_fee_per_gas``; :class:`FeeLimitReached` when even the base fee (or the gas price)
    is above it.
    """
    least = suggested if base_fee is None else base_fee
    if least > max_fee_per_gas:
        kind = "gas price" if base_fee is None else "base fee"
        raise FeeLimitReached(
            f"{what}: the chain's {kind} is {least} wei per gas, above the configured "
            f"maximum of {max_fee_per_gas} wei (chain_max_fee_gwei); nothing was sent")
    if base_fee is None:
        return Fees(suggested)
    cap = min(2 * base_fee + suggested, max_fee_per_gas)
    return Fees(cap, min(suggested, cap))


def _plus_ten_percent(wei: int) -> int:
    """The least amount a replacement must offer over ``wei``: geth refuses a replacement
    unless ``new * 100 >= old * 110`` for both fee cap and tip, and so does this."""
    return -(-wei * 11 // 10)


def bump_fees(offered: Fees, base_fee: int | None, suggested: int,
              max_fee_per_gas: int) -> Fees | None:
    """The fees of a replacement for a transaction that offered ``offered``.

    EIP-1559: tip = the larger of +10% and the node's ``suggested`` tip; cap = the larger of
    +10% and what a new transaction would offer now (2 x ``base_fee`` + that tip). Legacy
    (``offered.tip`` None): gas price = the larger of +10% and the node's ``suggested`` gas
    price. Nothing goes above ``max_fee_per_gas`` (and the tip not above the cap); None when
    that leaves less than +10% on either, so no node would accept the replacement.
    """
    least_cap = _plus_ten_percent(offered.max_fee)
    if offered.tip is None:
        price = min(max(least_cap, suggested), max_fee_per_gas)
        return Fees(price) if price >= least_cap else None
    least_tip = _plus_ten_percent(offered.tip)
    tip = max(least_tip, suggested)
    cap = min(max(least_cap, 2 * (base_fee or 0) + tip), max_fee_per_gas)
    tip = min(tip, cap)
    if cap < least_cap or tip < least_tip:
        return None
    return Fees(cap, tip)


def highest_fees(offers: Sequence[Fees]) -> Fees:
    """The most any of ``offers`` (the signatures of one transaction) offered, cap and tip
    each: what a replacement must beat, whichever of them the nodes' pools hold."""
    tips = [offer.tip for offer in offers if offer.tip is not None]
    return Fees(max(offer.max_fee for offer in offers), max(tips) if tips else None)
