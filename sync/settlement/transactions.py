"""The transaction lifecycle of the operator account: sign, journal, broadcast, follow.

Every transaction is signed locally, journaled (raw bytes committed to
:class:`~sync.settlement.txjournal.TxJournal` under a logical key) and only then broadcast;
:meth:`TxLifecycle.refresh` follows each one to 'final' (``confirmations`` blocks deep on
the canonical chain) and rebroadcasts the *same* bytes whenever the chain has none of it
(never mined, dropped, or undone by a reorg).

Fees rise, so a transaction signed when gas was cheap can be stuck, with every later nonce
behind it. :meth:`TxLifecycle.refresh` replaces a stuck one (still pending
``replace_after_blocks`` blocks after its newest signature while its nonce is the next the
chain takes; see :meth:`TxLifecycle._is_stuck`) by the same call with the same nonce and
fees raised by :func:`~sync.settlement.fees.bump_fees`, never above ``max_fee_per_gas``.
Every signature is journaled before it goes out, so whichever of them a block includes is
recognised, after a restart too. When the maximum leaves no room for another +10%, the
transaction stays pending, is rebroadcast as it is, and its status ``error`` says so.

Blocking, and not thread-safe on its own: :class:`~sync.settlement.adapter.SettlementAdapter`
holds a lock around every use.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from sync.settlement.calls import decode_raw_call, decode_raw_pricing
from sync.settlement.errors import (
    ChainUnavailable,
    InsufficientFunds,
    Refusal,
    SettlementError,
    TransactionFailed,
)
from sync.settlement.fees import Fees, bump_fees, highest_fees, new_fees
from sync.settlement.rpc import RpcClient
from sync.settlement.txjournal import JournalRow, SignedTx, TxJournal, now_ms

__all__ = ["AnchorStatus", "TxLifecycle"]

_POLL_S = 0.05
_REBROADCAST_EVERY_S = 2.0


@dataclass(frozen=True)
class AnchorStatus:
    """Where one journaled transaction stands.

    ``status`` is 'pending' (signed, maybe broadcast, in no canonical block), 'included'
    (in a canonical block, fewer than the required confirmations), 'final' or 'failed'
    (reverted, or refused for good; ``error`` says why). A pending one may have an ``error``
    too: the node's last refusal, or that it is stuck at the configured maximum fee.
    ``tx_hash`` is its newest signature, or the one a block included.
    """

    key: str
    status: str
    tx_hash: str
    nonce: int
    block_number: int | None
    confirmations: int
    error: str | None

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict of the fields."""
        return asdict(self)


def _status_of(row: JournalRow, head: int | None) -> AnchorStatus:
    confirmations = 0
    if row.block_number is not None and head is not None and row.status != "pending":
        confirmations = max(0, head - row.block_number + 1)
    return AnchorStatus(row.key, row.status, row.tx_hash, row.nonce, row.block_number,
                        confirmations, row.error)


class TxLifecycle:
    """The operator account's journaled transactions, from signature to finality.

    ``max_fee_per_gas`` (wei) bounds every fee cap (or legacy gas price) it signs;
    ``replace_after_blocks`` is how long a transaction may wait before it counts as stuck
    (:meth:`_is_stuck`); ``confirmations`` is how deep a block must be for 'final'.
    """

    def __init__(self, rpc: RpcClient, journal: TxJournal, address: str, *,
                 confirmations: int, replace_after_blocks: int, max_fee_per_gas: int) -> None:
        if confirmations < 1:
            raise ValueError("confirmations must be at least 1")
        if replace_after_blocks < 1:
            raise ValueError("replace_after_blocks must be at least 1")
        self._rpc = rpc
        self._journal = journal
        self._address = address
        self._confirmations = confirmations
        self._replace_after_blocks = replace_after_blocks
        self.max_fee_per_gas = max_fee_per_gas

    @property
    def max_fee_per_gas(self) -> int:
        """The most it signs for per gas (fee cap or legacy gas price), in wei."""
        return self._max_fee_per_gas

    @max_fee_per_gas.setter
    def max_fee_per_gas(self, wei: int) -> None:
        if wei < 1:
            raise ValueError("the maximum fee per gas must be positive")
        self._max_fee_per_gas = int(wei)

    # --- sending --------------------------------------------------------------------------

    def send(self, key: str, to: str | None, data: bytes, value: int, *, what: str,
              gas: int | None = None, retry_failed: bool = False) -> JournalRow:
        """Journal, then broadcast, the call ``(to, data, value)`` under journal key ``key``
        (``what`` names it in messages); returns its row, checked once against the chain.

        Idempotent: a key journaled with the same call returns its row and sends nothing
        (a failed one is retried only with ``retry_failed``, or when no block included it);
        with another call, :class:`TransactionFailed`. ``gas`` defaults to the node's
        estimate; a margin is added either way. :class:`FeeLimitReached` when the market is
        above ``max_fee_per_gas``, :class:`InsufficientFunds` when the balance is short.
        """
        existing = self._journal.get(key)
        if existing is not None:
            if decode_raw_call(existing.raw) != (to, data, value):
                raise TransactionFailed(f"{what}: the journal already holds {key} with "
                                        "different parameters; nothing was sent")
            never_mined = existing.block_number is None
            if existing.status != "failed" or not (retry_failed or never_mined):
                return existing
            self._journal.archive(key)
        self._rpc.bind_chain(self._journal)
        if gas is None:
            gas = self._rpc.estimate_gas(to, data, value, what)
        gas = gas * 6 // 5 + 10_000
        fees = new_fees(*self._rpc.fee_market(), self._max_fee_per_gas, what)
        nonce = self._next_nonce()
        self._require_funds(value, gas, fees)
        signed_at_block = self._rpc.head()
        raw, tx_hash = self._rpc.sign(to, data, value, nonce, gas, fees)
        stamp = now_ms()
        row = JournalRow(key, nonce, tx_hash, raw, "pending", None, None, None, stamp, stamp)
        # committed before the first byte goes out
        self._journal.insert(row, signed_at_block=signed_at_block)
        self._broadcast(row, first=True)
        try:
            return self._check(row, self._head(), rebroadcast=False)
        except ChainUnavailable:
            return row

    def _require_funds(self, value: int, gas: int, fees: Fees) -> None:
        needed = value + gas * fees.max_fee
        balance = self._rpc.balance()
        if balance < needed:
            raise InsufficientFunds(self._address, needed, balance)

    def _next_nonce(self) -> int:
        highest = self._journal.max_nonce()
        chain = self._rpc.pending_nonce()
        return max(chain, -1 if highest is None else highest + 1)

    def _broadcast(self, row: JournalRow, *, first: bool) -> JournalRow:
        """Send ``row.raw`` unchanged; returns the row as updated by the answer."""
        try:
            self._rpc.send_raw(row.raw)
        except InsufficientFunds as exc:
            self._journal.update(row.key, status="pending", block_number=None, block_hash=None,
                                 error=str(exc))
            raise
        except TransactionFailed as exc:
            nonce_spent = exc.refusal is Refusal.NONCE_TOO_LOW
            if nonce_spent:
                # One of its signatures was mined a moment ago (then a receipt shows up), or
                # the nonce went to another transaction of this account (then it never can be).
                for _ in range(5):
                    if any(self._rpc.receipt(signed.tx_hash) is not None
                           for signed in self._journal.signed(row.key)):
                        return row
                    time.sleep(_POLL_S)
            if first or nonce_spent:
                updated = self._journal.update(row.key, status="failed", block_number=None,
                                               block_hash=None, error=str(exc))
                if first:
                    raise
                return updated
            return self._journal.update(row.key, status=row.status,
                                        block_number=row.block_number,
                                        block_hash=row.block_hash, error=str(exc))
        return row

    # --- following transactions ------------------------------------------------------------

    def refresh(self) -> list[AnchorStatus]:
        """Follow every pending or included journal row one step (see the module doc):
        included and final by canonical receipts, failed on a revert (with the decoded
        error), rebroadcast unchanged when the chain has no receipt. Returns the statuses
        of the rows it looked at, in nonce order. :class:`ChainUnavailable` when the node
        cannot be reached; nothing is lost then."""
        self._rpc.bind_chain(self._journal)
        head = self._head()
        rows = self._journal.rows(("pending", "included"))
        return [self.status_of(self._check(row, head, rebroadcast=True)) for row in rows]

    def _head(self) -> int:
        head = self._rpc.head()
        self._journal.set_meta("head", str(head))
        return head

    def _check(self, row: JournalRow, head: int, *, rebroadcast: bool) -> JournalRow:
        signed = self._journal.signed(row.key)
        included = self._canonical_receipt(row, signed)
        if included is not None:
            tx_hash, receipt = included
            if tx_hash != row.tx_hash:  # an earlier signature made it after all
                row = self._journal.use_signed(row.key, tx_hash)
            block = int(receipt["blockNumber"])
            block_hash = "0x" + bytes(receipt["blockHash"]).hex()
            if int(receipt["status"]) == 0:
                reason = self._rpc.revert_reason(row.tx_hash, row.raw, block)
                return self._journal.update(row.key, status="failed", block_number=block,
                                            block_hash=block_hash, error=reason)
            head = max(head, block)
            status = "final" if head - block + 1 >= self._confirmations else "included"
            return self._journal.update(row.key, status=status, block_number=block,
                                        block_hash=block_hash, error=None)
        error = row.error
        if row.status == "included":
            error = f"block {row.block_number} left the canonical chain; rebroadcast"
        if row.status != "pending" or error != row.error:
            row = self._journal.update(row.key, status="pending", block_number=None,
                                       block_hash=None, error=error)
        if rebroadcast:
            try:
                if signed and self._is_stuck(row, signed[0], head):
                    row = self._replace(row, signed, head)
                else:
                    row = self._broadcast(row, first=False)
            except InsufficientFunds:
                row = self._journal.get(row.key) or row
        return row

    def _canonical_receipt(self, row: JournalRow, signed: Sequence[SignedTx]
                           ) -> tuple[str, dict[str, Any]] | None:
        """``(tx hash, receipt)`` of the signature of ``row`` in a canonical block, if any:
        the row's own first, then the others, newest first."""
        hashes = [row.tx_hash] + [item.tx_hash for item in signed if item.tx_hash != row.tx_hash]
        for tx_hash in hashes:
            receipt = self._rpc.receipt(tx_hash)
            if receipt is not None and self._rpc.is_canonical(receipt):
                return tx_hash, receipt
        return None

    def _is_stuck(self, row: JournalRow, newest: SignedTx, head: int) -> bool:
        """Whether a pending transaction (no signature of it in a canonical block) is stuck.

        It is when ``replace_after_blocks`` blocks have been added since its newest
        signature and its nonce is the next the chain takes (the account's transaction count
        at the head), so no earlier transaction holds it up: blocks had room for it and
        took others, because its fee cap is below the base fee, its tip loses to others, or
        the pools dropped it. Blocks, not seconds: where no block comes, nothing could have
        included it, and a higher fee would not help. A transaction waiting behind an
        earlier nonce is left alone; its turn comes when that one is included.
        """
        if head - newest.signed_at_block < self._replace_after_blocks:
            return False
        return row.nonce == self._rpc.confirmed_nonce()

    def _replace(self, row: JournalRow, signed: Sequence[SignedTx], head: int) -> JournalRow:
        """Re-sign a stuck transaction: same call, same nonce, fees from :func:`bump_fees`;
        journaled, then broadcast. When the maximum fee (or the balance) leaves no room for
        that, the newest signature is rebroadcast and the row's ``error`` says why."""
        gas, _ = decode_raw_pricing(row.raw)
        offered = highest_fees([decode_raw_pricing(item.raw)[1] for item in signed])
        base_fee, suggested = self._rpc.fee_market()
        fees = bump_fees(offered, base_fee, suggested, self._max_fee_per_gas)
        if fees is None:
            market = "" if base_fee is None else f"; the base fee is {base_fee} wei"
            return self._keep_waiting(row, (
                f"stuck since block {signed[0].signed_at_block} and not replaced: the "
                f"configured maximum fee of {self._max_fee_per_gas} wei per gas "
                f"(chain_max_fee_gwei) leaves no room for 10% more than the "
                f"{offered.max_fee} wei it offers{market}; it stays pending"))
        to, data, value = decode_raw_call(row.raw)
        try:
            self._require_funds(value, gas, fees)
        except InsufficientFunds as exc:
            return self._keep_waiting(row, f"stuck and not replaced: {exc}")
        raw, tx_hash = self._rpc.sign(to, data, value, row.nonce, gas, fees)
        row = self._journal.add_replacement(row.key, tx_hash, raw, signed_at_block=head)
        return self._broadcast(row, first=False)

    def _keep_waiting(self, row: JournalRow, reason: str) -> JournalRow:
        row = self._broadcast(row, first=False)
        if row.status != "pending":
            return row
        return self._journal.update(row.key, status="pending", block_number=None,
                                    block_hash=None, error=reason)

    def wait(self, row: JournalRow, wait_s: float, what: str) -> JournalRow:
        """Follow ``row`` until a block includes it (rebroadcasting now and then) and return
        it; :class:`TransactionFailed` when it failed, :class:`SettlementError` after
        ``wait_s`` seconds (it stays journaled)."""
        deadline = time.monotonic() + wait_s
        # The first rebroadcast comes soon: the row may be an old one that never went out.
        last_broadcast = time.monotonic() - _REBROADCAST_EVERY_S + 0.5
        if row.status != "failed":  # an old row may have left the chain since: look again
            row = self._check(row, self._head(), rebroadcast=False)
        while row.status not in ("included", "final", "failed"):
            if time.monotonic() > deadline:
                last_error = f" (last error: {row.error})" if row.error else ""
                raise SettlementError(
                    f"{what}: transaction {row.tx_hash} was not included within {wait_s:g} s"
                    f"{last_error}; it stays journaled and refresh() rebroadcasts it")
            time.sleep(_POLL_S)
            again = time.monotonic() - last_broadcast > _REBROADCAST_EVERY_S
            if again:
                last_broadcast = time.monotonic()
            row = self._check(row, self._head(), rebroadcast=again)
        if row.status == "failed":
            raise self._rpc.calls.failure(what, row.error, row.tx_hash)
        return row

    # --- journal views --------------------------------------------------------------------

    def status_of(self, row: JournalRow) -> AnchorStatus:
        """``row``'s status, its confirmations counted from the last head seen (no RPC)."""
        head = self._journal.get_meta("head")
        known = None if head is None else int(head)
        if row.block_number is not None:
            known = max(known or 0, row.block_number)
        return _status_of(row, known)

    def statuses(self) -> list[AnchorStatus]:
        """Every journaled transaction's last known status (no RPC), in nonce order."""
        return [self.status_of(row) for row in self._journal.rows()]

    def status(self, key: str) -> AnchorStatus | None:
        """The last known status of journal key ``key`` (no RPC), or None."""
        row = self._journal.get(key)
        return None if row is None else self.status_of(row)

