"""The settlement chain stack's errors, and what a node's refusal of a transaction means.

A node that refuses a transaction says why in its JSON-RPC error; :func:`classify_refusal`
reads the error code where the node's software gives these refusals codes of their own, and
the message only where it does not (:class:`Refusal`).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

__all__ = [
    "REFUSAL_CODES", "ChainUnavailable", "FeeLimitReached", "InsufficientFunds", "Refusal",
    "SettlementError", "TransactionFailed", "classify_refusal",
]


class SettlementError(Exception):
    """Base class of the settlement adapter's errors."""


class ChainUnavailable(SettlementError):
    """The settlement chain's RPC endpoint cannot be reached (refused, reset, timed out)."""


class InsufficientFunds(SettlementError):
    """The account cannot pay for a transaction's value and gas."""

    def __init__(self, address: str, needed: int, balance: int, *,
                 at_least: bool = False) -> None:
        bound = "at least" if at_least else "up to"
        super().__init__(f"account {address} has {balance} wei but the transaction needs "
                         f"{bound} {needed} wei (value plus gas limit times fee); fund it")
        self.address = address
        self.needed = needed
        self.balance = balance


class FeeLimitReached(SettlementError):
    """The chain asks more per gas than the configured maximum fee; nothing was signed."""


class Refusal(StrEnum):
    """Why a node refused a transaction, as far as its answer tells."""

    ALREADY_KNOWN = "already known"  # the pool holds these very bytes: as good as accepted
    NONCE_TOO_LOW = "nonce too low"  # the nonce is spent, by this or another transaction
    REPLACEMENT_UNDERPRICED = "replacement underpriced"  # a same-nonce one pays about as much
    INSUFFICIENT_FUNDS = "insufficient funds"
    FEE_TOO_LOW = "fee too low"  # below the block's base fee or the pool's minimum price
    OTHER = "other"


# Error codes that name a refusal, by node software (the first word of web3_clientVersion,
# lower case). Most nodes give none: geth answers -32000, anvil -32003 (EIP-1474's
# "transaction rejected") and Nethermind -32010 whatever the reason, and the same numbers
# mean other things elsewhere (-32001 is EIP-1474's "resource not found", -32004 its "method
# not supported"), so a code counts only for the software that defines it.
REFUSAL_CODES: dict[str, dict[int, Refusal]] = {
    "besu": {-32001: Refusal.NONCE_TOO_LOW, -32004: Refusal.INSUFFICIENT_FUNDS,
             -32009: Refusal.FEE_TOO_LOW},
}
# Where no code tells, the message does (lower case, looked for in this order).
_REFUSAL_MESSAGES: tuple[tuple[Refusal, tuple[str, ...]], ...] = (
    (Refusal.ALREADY_KNOWN, ("already known", "known transaction", "already imported",
                             "alreadyknown")),
    (Refusal.NONCE_TOO_LOW, ("nonce too low", "oldnonce")),
    (Refusal.REPLACEMENT_UNDERPRICED, ("replacement transaction underpriced",
                                       "replacement fee too low",
                                       "insufficient gas price to replace")),
    (Refusal.INSUFFICIENT_FUNDS, ("insufficient funds", "upfront cost exceeds",
                                  "insufficientfunds")),
    (Refusal.FEE_TOO_LOW, ("less than block base fee", "below current base fee",
                           "transaction underpriced", "gas price below", "feetoolow")),
)


def classify_refusal(code: int | None, message: str, software: str) -> Refusal:
    """What a node's error answer to a transaction means: by its JSON-RPC ``code`` where the
    node's ``software`` gives that refusal a code of its own, else by its ``message``."""
    by_code = REFUSAL_CODES.get(software, {}).get(code) if code is not None else None
    if by_code is not None:
        return by_code
    lowered = message.lower()
    for refusal, phrases in _REFUSAL_MESSAGES:
        if any(phrase in lowered for phrase in phrases):
            return refusal
    return Refusal.OTHER


class TransactionFailed(SettlementError):
    """A transaction reverted (or would), or the node refused it for good.

    ``error_name`` is the contract's custom error (``"AlreadyClaimed"``, ``"InvalidProof"``,
    ``"NotOperator"``, ...) when the revert data could be decoded; ``refusal`` says why the
    node refused it when it did.
    """

    def __init__(self, message: str, *, error_name: str | None = None,
                 error_args: tuple[Any, ...] = (), tx_hash: str | None = None,
                 refusal: Refusal | None = None) -> None:
        super().__init__(message)
        self.error_name = error_name
        self.error_args = error_args
        self.tx_hash = tx_hash
        self.refusal = refusal
