"""Epoch payouts: splitting a receipt's fee among its payees, and the payout Merkle tree.

Rounding rule (exact, integer): a receipt's ``fee`` is split among its payees by their
parts per million. Each payee first gets ``fee * ppm // 1_000_000``; the units that
floor division leaves over (fewer than the number of payees) go one each to the payees
with the largest remainders ``fee * ppm % 1_000_000``, ties broken by the receipt's own
payee order (sorted by id, then role). So the shares of every receipt sum to exactly its
fee: no unit is created or lost, and the result depends only on the receipt's bytes.

The payout tree of an epoch is an RFC 6962 tree (SHA-256, the receipt logs' hashing) whose
leaves are ``abi.encode(uint64 epoch, address payee, uint256 amount)``, one per payee
address, sorted by address. The settlement contract recomputes exactly this leaf.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from sync import merkle

PPM = 1_000_000
ADDRESS_RE = re.compile(r"^0x[0-9a-fA-F]{40}$")
MAX_UINT256 = (1 << 256) - 1


class PayoutError(ValueError):
    """Payout input that cannot be settled (a bad address, a negative amount)."""


def split_fee(fee: int, payees: Sequence[Sequence[object]]) -> list[tuple[str, int]]:
    """``[(payee_id, units)]`` for one receipt, summing exactly to ``fee``.

    ``payees`` is the receipt's ``[[payee_id, role, ppm], ...]`` (ppm summing to 10^6).
    A payee listed under two roles appears twice; callers aggregate by id.
    """
    if fee < 0:
        raise PayoutError("a fee cannot be negative")
    shares: list[list[int]] = []
    given = 0
    for position, (_payee, _role, ppm) in enumerate(payees):
        whole, remainder = divmod(fee * int(ppm), PPM)  # type: ignore[call-overload]
        shares.append([whole, remainder, position])
        given += whole
    leftover = fee - given
    if leftover and not shares:
        raise PayoutError("a receipt with a fee has no payees")
    for share in sorted(shares, key=lambda s: (-s[1], s[2]))[:leftover]:
        share[0] += 1
    return [(str(payees[position][0]), whole) for whole, _rem, position in shares]


def normalise_address(payee: str) -> bytes:
    """The 20 bytes of an ``0x``-prefixed hex address; :class:`PayoutError` otherwise."""
    if not isinstance(payee, str) or not ADDRESS_RE.fullmatch(payee):
        raise PayoutError(f"payee {payee!r} is not an address (0x and 40 hex digits)")
    return bytes.fromhex(payee[2:])


def payout_leaf_data(epoch: int, payee: bytes, amount: int) -> bytes:
    """``abi.encode(uint64 epoch, address payee, uint256 amount)``: three 32-byte words."""
    if not 0 <= epoch < 1 << 64:
        raise PayoutError("epoch out of range")
    if len(payee) != 20:
        raise PayoutError("a payee address is 20 bytes")
    if not 0 <= amount <= MAX_UINT256:
        raise PayoutError("amount out of range")
    return epoch.to_bytes(32, "big") + bytes(12) + payee + amount.to_bytes(32, "big")


def payout_leaf(epoch: int, payee: bytes, amount: int) -> bytes:
    """The leaf hash ``SHA-256(0x00 || abi.encode(epoch, payee, amount))``."""
    return merkle.leaf_hash(payout_leaf_data(epoch, payee, amount))


class _Rows:
    def __init__(self, rows: Iterable[tuple[int, int, bytes]]) -> None:
        self._rows = {(level, index): value for level, index, value in rows}

    def subtree(self, level: int, index: int) -> bytes:
        return self._rows[(level, index)]


@dataclass(frozen=True)
class PayoutProof:
    epoch: int
    payee: bytes
    amount: int
    index: int
    size: int
    proof: list[bytes]

    def to_json(self) -> dict[str, object]:
        return {"epoch": self.epoch, "payee": "0x" + self.payee.hex(), "amount": str(self.amount),
                "index": self.index, "leaf_count": self.size,
                "proof": ["0x" + item.hex() for item in self.proof]}


class PayoutTree:
    """The payout tree of one epoch over ``{address: amount}`` (zero amounts dropped)."""

    def __init__(self, epoch: int, amounts: Mapping[bytes, int]) -> None:
        self.epoch = epoch
        self.entries: list[tuple[bytes, int]] = sorted(
            (bytes(payee), amount) for payee, amount in amounts.items() if amount)
        leaves = [payout_leaf(epoch, payee, amount) for payee, amount in self.entries]
        self._reader = _Rows(merkle.completed_subtrees(0, leaves, _Rows(())))
        self._index = {payee: index for index, (payee, _amount) in enumerate(self.entries)}

    @property
    def size(self) -> int:
        return len(self.entries)

    @property
    def total(self) -> int:
        return sum(amount for _payee, amount in self.entries)

    @property
    def root(self) -> bytes:
        return merkle.root(self.size, self._reader)

    def proof(self, payee: bytes) -> PayoutProof:
        """The inclusion proof of ``payee``'s leaf; KeyError when it has none this epoch."""
        index = self._index[bytes(payee)]
        amount = self.entries[index][1]
        return PayoutProof(self.epoch, bytes(payee), amount, index, self.size,
                           merkle.inclusion_proof(index, self.size, self._reader))


def verify_payout(proof: PayoutProof, root: bytes) -> None:
    """Raise :class:`sync.merkle.ProofError` unless ``proof`` leads to ``root``."""
    merkle.verify_inclusion(payout_leaf(proof.epoch, proof.payee, proof.amount),
                            proof.index, proof.size, proof.proof, root)
