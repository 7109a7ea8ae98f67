"""Settlement on an EVM chain: the fleet operator's adapter over web3.py.

The adapter sends the operator's transactions to the ``EdgedSettlement`` contract
(:mod:`sync.contracts`): checkpoint anchors, epoch payout roots, claims. Every transaction
is signed locally, journaled (raw bytes committed to :class:`~sync.txjournal.TxJournal`)
and only then broadcast; :meth:`SettlementAdapter.refresh` follows each one to 'final'
(``confirmations`` blocks deep on the canonical chain) and rebroadcasts the *same* bytes
whenever the chain has none of it (never mined, dropped, or undone by a reorg). An anchor
counts as settled only when final.

Fees rise, so a transaction signed when gas was cheap can be stuck, with every later nonce
behind it. :meth:`SettlementAdapter.refresh` replaces a stuck one (still pending
``replace_after_blocks`` blocks after its newest signature while its nonce is the next the
chain takes; see :meth:`SettlementAdapter._is_stuck`) by the same call with the same nonce
and fees raised by :func:`bump_fees`: at least +10% on both fee cap and tip, which geth
requires of a replacement, never above ``max_fee_per_gas``. Every signature is journaled
before it goes out, so whichever of them a block includes is recognised, after a restart
too. When the maximum leaves no room for another +10%, the transaction stays pending, is
rebroadcast as it is, and its status ``error`` says so.

web3.py is the optional extra ``fleet`` (``pip install 'edged[fleet]'``); this module
imports without it and raises :class:`SettlementError` saying so when used. The API is
blocking; the fleet calls it from a worker thread.
"""

from __future__ import annotations

import os
import secrets
import stat
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sync.contracts import load_artifact
from sync.settlement_rpc import (
    ChainUnavailable,
    FeeLimitReached,
    Fees,
    InsufficientFunds,
    Refusal,
    RpcClient,
    SettlementError,
    TransactionFailed,
    create_address,
    decode_raw_call,
    decode_raw_pricing,
    missing_extra,
    redact_url,
)
from sync.txjournal import JournalError, JournalRow, SignedTx, TxJournal, now_ms

try:
    from eth_account import Account
    from eth_account.signers.local import LocalAccount
except ImportError:  # pragma: no cover - only without the `fleet` extra
    pass

__all__ = [
    "DEFAULT_MAX_FEE_PER_GAS", "AnchorStatus", "ChainUnavailable", "FeeLimitReached", "Fees",
    "InsufficientFunds", "JournalError", "SettlementAdapter", "SettlementError",
    "TransactionFailed", "TxJournal", "bump_fees", "create_account_key", "load_account_key",
    "redact_url",
]

_POLL_S = 0.05
_REBROADCAST_EVERY_S = 2.0
_GWEI = 10**9
DEFAULT_MAX_FEE_PER_GAS = 500 * _GWEI  # the chain_max_fee_gwei setting's default


def _require_extra() -> None:
    missing = missing_extra()
    if missing is not None:
        raise SettlementError(
            f"settlement needs web3.py, which is not installed ({missing}); "
            "install it with: pip install 'edged[fleet]'")


# --- account key files -------------------------------------------------------------------------


def create_account_key(path: Path) -> str:
    """Write a new random secp256k1 private key (hex) to a new file with mode 0600.

    Refuses to overwrite an existing file (``FileExistsError``). Returns the account's
    checksum address.
    """
    _require_extra()
    account = Account.from_key(_random_key())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write("0x" + bytes(account.key).hex() + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    return str(account.address)


def _random_key() -> bytes:
    order = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
    while True:
        candidate = secrets.token_bytes(32)
        if 0 < int.from_bytes(candidate, "big") < order:
            return candidate


def load_account_key(path: Path) -> LocalAccount:
    """The account whose private key ``path`` holds (hex, optional ``0x``).

    Raises :class:`SettlementError` when the file gives group or others any access (the
    key is a wallet: ``chmod 600`` it) or does not hold a key. The key never appears in a
    message.
    """
    _require_extra()
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise SettlementError(f"cannot read account key {path}: {exc.strerror}") from None
    with os.fdopen(fd, "r", encoding="ascii", errors="replace") as handle:
        mode = os.fstat(handle.fileno()).st_mode
        if not stat.S_ISREG(mode):
            raise SettlementError(f"account key {path} is not a regular file")
        if mode & 0o077:
            raise SettlementError(
                f"account key {path} has mode {stat.S_IMODE(mode):04o}, which lets group or "
                f"others access it; run: chmod 600 {path}")
        text = handle.read(200).strip()
    hex_key = text[2:] if text.lower().startswith("0x") else text
    try:
        key = bytes.fromhex(hex_key)
        if len(key) != 32:
            raise ValueError("not 32 bytes")
        return Account.from_key(key)
    except ValueError:
        raise SettlementError(
            f"account key {path} does not hold a 32-byte hex private key") from None


# --- fees --------------------------------------------------------------------------------------


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


def _highest_fees(signed: Sequence[SignedTx]) -> Fees:
    """The most any of ``signed`` offered, cap and tip each: what a replacement must beat,
    whichever of them the nodes' pools hold."""
    offers = [decode_raw_pricing(item.raw)[1] for item in signed]
    tips = [offer.tip for offer in offers if offer.tip is not None]
    return Fees(max(offer.max_fee for offer in offers), max(tips) if tips else None)


# --- statuses ----------------------------------------------------------------------------------


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


# --- the adapter -------------------------------------------------------------------------------


class SettlementAdapter:
    """The operator account's view of one ``EdgedSettlement`` contract.

    ``contract_address`` may be left out before :meth:`deploy`, or when the journal holds
    this account's deployment (its address follows from the deploying nonce).
    ``max_fee_per_gas`` (wei) bounds every fee cap (or legacy gas price) it signs;
    ``replace_after_blocks`` is how long a transaction may wait before it counts as stuck
    (:meth:`_is_stuck`).
    """

    def __init__(self, rpc_url: str, account_key_path: Path, journal_path: Path, *,
                 contract_address: str | None = None, confirmations: int = 12,
                 timeout_s: float = 10.0, max_fee_per_gas: int = DEFAULT_MAX_FEE_PER_GAS,
                 replace_after_blocks: int = 3) -> None:
        _require_extra()
        if confirmations < 1:
            raise ValueError("confirmations must be at least 1")
        if replace_after_blocks < 1:
            raise ValueError("replace_after_blocks must be at least 1")
        self._account = load_account_key(account_key_path)
        self._confirmations = confirmations
        self._replace_after_blocks = replace_after_blocks
        self.max_fee_per_gas = max_fee_per_gas
        self._lock = threading.RLock()
        artifact = load_artifact()
        self._bytecode = bytes.fromhex(str(artifact["bytecode"])[2:])
        self._rpc = RpcClient(rpc_url, timeout_s, artifact["abi"], self._account)
        self._journal = TxJournal(journal_path)
        try:
            self._journal.bind("account", self._account.address)
        except JournalError as exc:
            self._journal.close()
            raise SettlementError(str(exc)) from None
        self._contract_address: str | None = None
        if contract_address is not None:
            self._contract_address = self._rpc.checksum(contract_address)
        else:
            deployed = self._journal.get("deploy")
            if deployed is not None and deployed.status != "failed":
                self._contract_address = create_address(self.address, deployed.nonce)

    # --- lifecycle and properties ---------------------------------------------------------

    def close(self) -> None:
        """Close the HTTP session and the journal."""
        self._rpc.close()
        self._journal.close()

    def __enter__(self) -> SettlementAdapter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def address(self) -> str:
        """The operator account's checksum address."""
        return str(self._account.address)

    @property
    def contract_address(self) -> str | None:
        """The settlement contract's checksum address (None before it is known)."""
        return self._contract_address

    @property
    def max_fee_per_gas(self) -> int:
        """The most it signs for per gas (fee cap or legacy gas price), in wei."""
        return self._max_fee_per_gas

    @max_fee_per_gas.setter
    def max_fee_per_gas(self, wei: int) -> None:
        if wei < 1:
            raise ValueError("the maximum fee per gas must be positive")
        self._max_fee_per_gas = int(wei)

    @property
    def url(self) -> str:
        """The RPC URL with credentials, query and long path tokens removed."""
        return self._rpc.safe_url

    def _contract(self) -> str:
        if self._contract_address is None:
            raise SettlementError("no settlement contract: deploy() it or pass contract_address")
        return self._contract_address

    # --- sending --------------------------------------------------------------------------

    def deploy(self, *, wait_s: float = 60.0) -> str:
        """Deploy the contract from the artifact (journal key ``deploy``), wait until a block
        includes it and return its address. Idempotent: a journaled deployment is followed,
        not repeated."""
        with self._lock:
            row = self._send("deploy", None, self._bytecode, 0, what="deploy")
            address = create_address(self.address, row.nonce)
            row = self._wait(row, wait_s, "deploy")
            self._contract_address = address
            return address

    def anchor_checkpoint(self, node: bytes, size: int, root: bytes) -> AnchorStatus:
        """Record checkpoint ``(node, size, root)`` on chain (``recordCheckpoint``).

        Journal key ``checkpoint:<node hex>:<size>``: when it is journaled already, its
        status comes back and nothing is sent. :class:`TransactionFailed` when the chain
        would revert (e.g. ``NodeFrozen``) or the key was journaled with another root.
        """
        if len(node) != 32 or len(root) != 32:
            raise ValueError("node and root are 32 bytes")
        with self._lock:
            data = self._rpc.encode("recordCheckpoint", [bytes(node), size, bytes(root)])
            key = f"checkpoint:{bytes(node).hex()}:{size}"
            return self._status(self._send(key, self._contract(), data, 0,
                                           what=f"checkpoint {size}"))

    def post_epoch(self, epoch: int, root: bytes, leaf_count: int,
                   total_wei: int) -> AnchorStatus:
        """Post an epoch's payout root with ``total_wei`` attached (``postEpoch``).

        Idempotent by journal key ``epoch:<n>`` like :meth:`anchor_checkpoint`.
        """
        if len(root) != 32:
            raise ValueError("root is 32 bytes")
        with self._lock:
            data = self._rpc.encode("postEpoch", [epoch, bytes(root), leaf_count])
            return self._status(self._send(f"epoch:{epoch}", self._contract(), data, total_wei,
                                           what=f"epoch {epoch}"))

    def claim(self, epoch: int, payee: str, amount: int, index: int, proof: Sequence[bytes],
              *, wait_s: float = 60.0) -> str:
        """Submit ``payee``'s claim (the amount goes to the payee; this account pays gas),
        wait for its receipt and return the transaction hash.

        The chain is always asked first (gas estimation), so a second claim fails with
        :class:`TransactionFailed` ``AlreadyClaimed`` however the journal (key
        ``claim:<epoch>:<payee>``) looks; a revert raises with the custom error's name.
        """
        with self._lock:
            payee = self._rpc.checksum(payee)
            data = self._rpc.encode("claim", [epoch, payee, amount, index,
                                              [bytes(item) for item in proof]])
            what = f"claim of epoch {epoch} for {payee}"
            to = self._contract()
            gas = self._rpc.estimate_gas(to, data, 0, what)
            row = self._send(f"claim:{epoch}:{payee.lower()}", to, data, 0, what=what, gas=gas,
                             retry_failed=True)
            return self._wait(row, wait_s, what).tx_hash

    def _send(self, key: str, to: str | None, data: bytes, value: int, *, what: str,
              gas: int | None = None, retry_failed: bool = False) -> JournalRow:
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
        fees = self._new_fees(what)
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

    def _new_fees(self, what: str) -> Fees:
        """EIP-1559: cap 2 x base fee + the node's suggested tip; legacy: the node's gas
        price. At most ``max_fee_per_gas``; :class:`FeeLimitReached` when even the base fee
        (or the gas price) is above it."""
        base_fee, suggested = self._rpc.fee_market()
        least = suggested if base_fee is None else base_fee
        if least > self._max_fee_per_gas:
            kind = "gas price" if base_fee is None else "base fee"
            raise FeeLimitReached(
                f"{what}: the chain's {kind} is {least} wei per gas, above the configured "
                f"maximum of {self._max_fee_per_gas} wei (chain_max_fee_gwei); nothing was "
                "sent")
        if base_fee is None:
            return Fees(suggested)
        cap = min(2 * base_fee + suggested, self._max_fee_per_gas)
        return Fees(cap, min(suggested, cap))

    def _require_funds(self, value: int, gas: int, fees: Fees) -> None:
        needed = value + gas * fees.max_fee
        balance = self._rpc.balance()
        if balance < needed:
            raise InsufficientFunds(self.address, needed, balance)

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
        with self._lock:
            self._rpc.bind_chain(self._journal)
            head = self._head()
            rows = self._journal.rows(("pending", "included"))
            return [self._status(self._check(row, head, rebroadcast=True)) for row in rows]

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
        offered = _highest_fees(signed)
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

    def _wait(self, row: JournalRow, wait_s: float, what: str) -> JournalRow:
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
            raise self._rpc.failure(what, row.error, row.tx_hash)
        return row

    # --- journal views ---------------------------------------------------------------------

    def _status(self, row: JournalRow) -> AnchorStatus:
        head = self._journal.get_meta("head")
        known = None if head is None else int(head)
        if row.block_number is not None:
            known = max(known or 0, row.block_number)
        return _status_of(row, known)

    def statuses(self) -> list[AnchorStatus]:
        """Every journaled transaction's last known status (no RPC), in nonce order."""
        return [self._status(row) for row in self._journal.rows()]

    def status(self, key: str) -> AnchorStatus | None:
        """The last known status of journal key ``key`` (no RPC), or None."""
        row = self._journal.get(key)
        return None if row is None else self._status(row)

    # --- reads -----------------------------------------------------------------------------

    def chain_status(self) -> dict[str, Any]:
        """``{reachable, url, chain_id, block, account, balance_wei, contract}``; never
        raises: an unreachable or failing node gives ``reachable: False`` and ``error``."""
        report: dict[str, Any] = {"reachable": False, "url": self.url, "chain_id": None,
                                  "block": None, "account": self.address,
                                  "balance_wei": None, "contract": self._contract_address}
        try:
            report.update(chain_id=self._rpc.chain_id(), block=self._rpc.head(),
                          balance_wei=self._rpc.balance(), reachable=True)
        except Exception as exc:  # a status report never raises; the text says what failed
            report.update(reachable=False, error=str(exc) or type(exc).__name__)
        return report

    def checkpoint_root(self, node: bytes, size: int) -> bytes:
        """The root recorded for ``(node, size)``; 32 zero bytes when none is."""
        return bytes(self._rpc.view(self._contract(), "checkpointRoot", bytes(node), size))

    def epoch(self, epoch: int) -> dict[str, Any]:
        """``{root, leaf_count, total, claimed}`` of a posted epoch (zeros when unknown)."""
        root, leaf_count, total, claimed = self._rpc.view(self._contract(), "epochs", epoch)
        return {"root": bytes(root), "leaf_count": int(leaf_count), "total": int(total),
                "claimed": int(claimed)}

    def is_claimed(self, epoch: int, payee_address: str) -> bool:
        """Whether ``payee_address`` has claimed its payout of ``epoch``."""
        return bool(self._rpc.view(self._contract(), "claimed", epoch,
                                   self._rpc.checksum(payee_address)))

    def is_frozen(self, node: bytes) -> bool:
        """Whether ``node`` was caught equivocating (no later checkpoint is accepted)."""
        return bool(self._rpc.view(self._contract(), "frozen", bytes(node)))
