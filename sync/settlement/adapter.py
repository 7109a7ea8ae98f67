"""Settlement on an EVM chain: the fleet operator's adapter, a facade over the chain stack.

:class:`SettlementAdapter` sends the operator's transactions to the ``EdgedSettlement``
contract (:mod:`sync.settlement.contracts`): checkpoint anchors, epoch payout roots, claims.
It builds each call (:mod:`~sync.settlement.calls`) and hands it to the transaction
lifecycle (:mod:`~sync.settlement.transactions`: signed, journaled, broadcast, followed to
'final', replaced when stuck), and reads the contract's state (:mod:`~sync.settlement.rpc`).
An anchor counts as settled only when final.

web3.py is the optional extra ``fleet`` (``pip install 'edged[fleet]'``); this module
imports without it and raises :class:`SettlementError` saying so when used. The API is
blocking; the fleet calls it from a worker thread.

The names callers need are re-exported here, so the fleet imports this one module.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sync.settlement.calls import ContractCalls, create_address
from sync.settlement.contracts import load_artifact
from sync.settlement.errors import (
    ChainUnavailable,
    FeeLimitReached,
    InsufficientFunds,
    SettlementError,
    TransactionFailed,
)
from sync.settlement.extra import require_extra
from sync.settlement.fees import DEFAULT_MAX_FEE_PER_GAS, Fees, bump_fees
from sync.settlement.keys import create_account_key, load_account_key
from sync.settlement.rpc import RpcClient, redact_url
from sync.settlement.transactions import AnchorStatus, TxLifecycle
from sync.settlement.txjournal import JournalError, TxJournal

__all__ = [
    "DEFAULT_MAX_FEE_PER_GAS", "AnchorStatus", "ChainUnavailable", "FeeLimitReached", "Fees",
    "InsufficientFunds", "JournalError", "SettlementAdapter", "SettlementError",
    "TransactionFailed", "TxJournal", "bump_fees", "create_account_key", "load_account_key",
    "redact_url",
]


class SettlementAdapter:
    """The operator account's view of one ``EdgedSettlement`` contract.

    ``contract_address`` may be left out before :meth:`deploy`, or when the journal holds
    this account's deployment (its address follows from the deploying nonce).
    ``max_fee_per_gas`` (wei) bounds every fee cap (or legacy gas price) it signs;
    ``replace_after_blocks`` is how long a transaction may wait before it counts as stuck
    (:meth:`TxLifecycle._is_stuck <sync.settlement.transactions.TxLifecycle._is_stuck>`).
    """

    def __init__(self, rpc_url: str, account_key_path: Path, journal_path: Path, *,
                 contract_address: str | None = None, confirmations: int = 12,
                 timeout_s: float = 10.0, max_fee_per_gas: int = DEFAULT_MAX_FEE_PER_GAS,
                 replace_after_blocks: int = 3) -> None:
        require_extra()
        if confirmations < 1:
            raise ValueError("confirmations must be at least 1")
        if replace_after_blocks < 1:
            raise ValueError("replace_after_blocks must be at least 1")
        if max_fee_per_gas < 1:
            raise ValueError("the maximum fee per gas must be positive")
        self._account = load_account_key(account_key_path)
        self._lock = threading.RLock()
        artifact = load_artifact()
        self._bytecode = bytes.fromhex(str(artifact["bytecode"])[2:])
        self._calls = ContractCalls(artifact["abi"])
        self._rpc = RpcClient(rpc_url, timeout_s, self._calls, self._account)
        self._journal = TxJournal(journal_path)
        try:
            self._journal.bind("account", self._account.address)
        except JournalError as exc:
            self._journal.close()
            raise SettlementError(str(exc)) from None
        self._txs = TxLifecycle(self._rpc, self._journal, self.address,
                                confirmations=confirmations,
                                replace_after_blocks=replace_after_blocks,
                                max_fee_per_gas=max_fee_per_gas)
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
        return self._txs.max_fee_per_gas

    @max_fee_per_gas.setter
    def max_fee_per_gas(self, wei: int) -> None:
        self._txs.max_fee_per_gas = wei

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
            row = self._txs.send("deploy", None, self._bytecode, 0, what="deploy")
            address = create_address(self.address, row.nonce)
            row = self._txs.wait(row, wait_s, "deploy")
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
            data = self._calls.encode("recordCheckpoint", [bytes(node), size, bytes(root)])
            key = f"checkpoint:{bytes(node).hex()}:{size}"
            row = self._txs.send(key, self._contract(), data, 0, what=f"checkpoint {size}")
            return self._txs.status_of(row)

    def post_epoch(self, epoch: int, root: bytes, leaf_count: int,
                   total_wei: int) -> AnchorStatus:
        """Post an epoch's payout root with ``total_wei`` attached (``postEpoch``).

        Idempotent by journal key ``epoch:<n>`` like :meth:`anchor_checkpoint`.
        """
        if len(root) != 32:
            raise ValueError("root is 32 bytes")
        with self._lock:
            data = self._calls.encode("postEpoch", [epoch, bytes(root), leaf_count])
            row = self._txs.send(f"epoch:{epoch}", self._contract(), data, total_wei,
                                 what=f"epoch {epoch}")
            return self._txs.status_of(row)

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
            data = self._calls.encode("claim", [epoch, payee, amount, index,
                                                [bytes(item) for item in proof]])
            what = f"claim of epoch {epoch} for {payee}"
            to = self._contract()
            gas = self._rpc.estimate_gas(to, data, 0, what)
            row = self._txs.send(f"claim:{epoch}:{payee.lower()}", to, data, 0, what=what,
                                 gas=gas, retry_failed=True)
            return self._txs.wait(row, wait_s, what).tx_hash

    # --- following transactions ------------------------------------------------------------

    def refresh(self) -> list[AnchorStatus]:
        """Follow every pending or included journaled transaction one step (see
        :meth:`TxLifecycle.refresh <sync.settlement.transactions.TxLifecycle.refresh>`);
        their statuses in nonce order. :class:`ChainUnavailable` when the node cannot be
        reached; nothing is lost then."""
        with self._lock:
            return self._txs.refresh()

    def statuses(self) -> list[AnchorStatus]:
        """Every journaled transaction's last known status (no RPC), in nonce order."""
        return self._txs.statuses()

    def status(self, key: str) -> AnchorStatus | None:
        """The last known status of journal key ``key`` (no RPC), or None."""
        return self._txs.status(key)

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
