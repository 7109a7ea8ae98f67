"""Settlement on an EVM chain: the fleet operator's adapter over web3.py.

The adapter sends the operator's transactions to the ``EdgedSettlement`` contract
(:mod:`sync.contracts`): checkpoint anchors, epoch payout roots, claims. Every transaction
is signed locally, journaled (raw bytes committed to :class:`~sync.txjournal.TxJournal`)
and only then broadcast; :meth:`SettlementAdapter.refresh` follows each one to 'final'
(``confirmations`` blocks deep on the canonical chain) and rebroadcasts the *same* bytes
whenever the chain has none of it (never mined, dropped, or undone by a reorg). An anchor
counts as settled only when final.

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
    InsufficientFunds,
    RpcClient,
    SettlementError,
    TransactionFailed,
    create_address,
    decode_raw_call,
    missing_extra,
    redact_url,
)
from sync.txjournal import JournalError, JournalRow, TxJournal, now_ms

try:
    from eth_account import Account
    from eth_account.signers.local import LocalAccount
except ImportError:  # pragma: no cover - only without the `fleet` extra
    pass

__all__ = [
    "AnchorStatus", "ChainUnavailable", "InsufficientFunds", "JournalError", "SettlementAdapter",
    "SettlementError", "TransactionFailed", "TxJournal", "create_account_key",
    "load_account_key", "redact_url",
]

_POLL_S = 0.05
_REBROADCAST_EVERY_S = 2.0


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


# --- statuses ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class AnchorStatus:
    """Where one journaled transaction stands.

    ``status`` is 'pending' (signed, maybe broadcast, in no canonical block), 'included'
    (in a canonical block, fewer than the required confirmations), 'final' or 'failed'
    (reverted, or refused for good; ``error`` says why).
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
    """

    def __init__(self, rpc_url: str, account_key_path: Path, journal_path: Path, *,
                 contract_address: str | None = None, confirmations: int = 12,
                 timeout_s: float = 10.0) -> None:
        _require_extra()
        if confirmations < 1:
            raise ValueError("confirmations must be at least 1")
        self._account = load_account_key(account_key_path)
        self._confirmations = confirmations
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
        fees = self._rpc.fees()
        nonce = self._next_nonce()
        max_fee = fees.get("maxFeePerGas", fees.get("gasPrice", 0))
        needed = value + gas * max_fee
        balance = self._rpc.balance()
        if balance < needed:
            raise InsufficientFunds(self.address, needed, balance)
        raw, tx_hash = self._rpc.sign(to, data, value, nonce, gas, fees)
        stamp = now_ms()
        row = JournalRow(key, nonce, tx_hash, raw, "pending", None, None, None, stamp, stamp)
        self._journal.insert(row)  # committed before the first byte goes out
        self._broadcast(row, first=True)
        try:
            return self._check(row, self._head(), rebroadcast=False)
        except ChainUnavailable:
            return row

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
            if "nonce too low" in str(exc).lower():
                # Mined a moment ago (then a receipt shows up), or the nonce went to another
                # transaction of this account (then this one can never be mined).
                for _ in range(5):
                    if self._rpc.receipt(row.tx_hash) is not None:
                        return row
                    time.sleep(_POLL_S)
            if first or "nonce too low" in str(exc).lower():
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
        receipt = self._rpc.receipt(row.tx_hash)
        if receipt is not None and self._rpc.is_canonical(receipt):
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
                row = self._broadcast(row, first=False)
            except InsufficientFunds:
                row = self._journal.get(row.key) or row
        return row

    def _wait(self, row: JournalRow, wait_s: float, what: str) -> JournalRow:
        deadline = time.monotonic() + wait_s
        # The first rebroadcast comes soon: the row may be an old one that never went out.
        last_broadcast = time.monotonic() - _REBROADCAST_EVERY_S + 0.5
        if row.status != "failed":  # an old row may have left the chain since: look again
            row = self._check(row, self._head(), rebroadcast=False)
        while row.status not in ("included", "final", "failed"):
            if time.monotonic() > deadline:
                raise SettlementError(
                    f"{what}: transaction {row.tx_hash} was not included within {wait_s:g} s; "
                    "it stays journaled and refresh() rebroadcasts it")
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
