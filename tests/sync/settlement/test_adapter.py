"""The settlement adapter on a real anvil node: journaling, finality, rebroadcasts, failures,
replacement of stuck transactions."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from eth_account import Account

from sync.settlement.adapter import (
    AnchorStatus,
    ChainUnavailable,
    FeeLimitReached,
    Fees,
    InsufficientFunds,
    SettlementAdapter,
    SettlementError,
    TransactionFailed,
    create_account_key,
)
from sync.settlement.calls import decode_raw_pricing
from sync.settlement.payout import PayoutTree
from tests.support import anvil as anvil_support
from tests.support.anvil import (
    AnvilError,
    AnvilNode,
    RpcGate,
    closed_port_url,
    start_anvil,
    write_key_file,
)

NODE = bytes(range(32))
ROOT = bytes(range(100, 132))
OTHER_ROOT = bytes(range(200, 232))

AdapterFactory = Callable[..., SettlementAdapter]


@pytest.fixture
def adapters(tmp_path: Path, operator_key_file: Path, anvil: AnvilNode
             ) -> Iterator[AdapterFactory]:
    """``make(url=anvil, key=operator, journal="journal.sqlite", **kwargs)``; all closed after."""
    made: list[SettlementAdapter] = []

    def make(url: str | None = None, key: Path | None = None, journal: str = "journal.sqlite",
             **kwargs: object) -> SettlementAdapter:
        adapter = SettlementAdapter(url or anvil.url, key or operator_key_file,
                                    tmp_path / journal, **kwargs)  # type: ignore[arg-type]
        made.append(adapter)
        return adapter

    yield make
    for adapter in made:
        adapter.close()


def _nonce(anvil: AnvilNode, address: str) -> int:
    return int(anvil.rpc("eth_getTransactionCount", address, "pending"), 16)


def _journal_raw(path: Path, key: str) -> bytes:
    with sqlite3.connect(path) as db:
        found = db.execute("SELECT raw FROM txs WHERE key = ?", (key,)).fetchone()
    db.close()
    return bytes(found[0])


def _settled(adapter: SettlementAdapter, key: str, timeout_s: float = 10.0) -> AnchorStatus:
    """Refresh until ``key`` is in a block (anvil's automine is asynchronous)."""
    deadline = time.monotonic() + timeout_s
    while True:
        adapter.refresh()
        status = adapter.status(key)
        assert status is not None
        if status.status in ("included", "final") or time.monotonic() > deadline:
            return status
        time.sleep(0.02)


# --- sending and following ---------------------------------------------------------------------


def test_anchor_goes_pending_included_final(anvil: AnvilNode, adapters: AdapterFactory,
                                            tmp_path: Path) -> None:
    adapter = adapters(confirmations=3)
    contract = adapter.deploy()
    assert adapter.contract_address == contract
    anvil.set_automine(False)

    status = adapter.anchor_checkpoint(NODE, 7, ROOT)
    assert (status.key, status.status, status.block_number, status.confirmations) == (
        f"checkpoint:{NODE.hex()}:7", "pending", None, 0)
    assert anvil.transaction(status.tx_hash) is not None and anvil.pool_size() == 1
    assert _journal_raw(tmp_path / "journal.sqlite", status.key) == bytes.fromhex(
        anvil.rpc("eth_getRawTransactionByHash", status.tx_hash)[2:])
    assert [s.status for s in adapter.refresh() if s.key == status.key] == ["pending"]

    nonce_before = _nonce(anvil, adapter.address)
    again = adapter.anchor_checkpoint(NODE, 7, ROOT)  # journaled: nothing is sent
    assert again == status
    assert _nonce(anvil, adapter.address) == nonce_before and anvil.pool_size() == 1
    with pytest.raises(TransactionFailed, match="different parameters"):
        adapter.anchor_checkpoint(NODE, 7, OTHER_ROOT)
    assert _nonce(anvil, adapter.address) == nonce_before

    seen = []
    for _ in range(3):
        anvil.mine(1)
        [now] = [s for s in adapter.refresh() if s.key == status.key]
        seen.append((now.status, now.confirmations, now.tx_hash))
    assert seen == [("included", 1, status.tx_hash), ("included", 2, status.tx_hash),
                    ("final", 3, status.tx_hash)]
    assert adapter.refresh() == []  # nothing left to follow
    assert adapter.status(status.key) == AnchorStatus(
        status.key, "final", status.tx_hash, status.nonce, now.block_number, 3, None)
    assert adapter.status(status.key).to_json()["status"] == "final"  # type: ignore[union-attr]
    assert [s.key for s in adapter.statuses()] == ["deploy", status.key]
    assert adapter.checkpoint_root(NODE, 7) == ROOT
    assert adapter.checkpoint_root(NODE, 8) == bytes(32)
    assert adapter.is_frozen(NODE) is False


def test_restart_rebroadcasts_the_same_raw_transaction(anvil: AnvilNode, tmp_path: Path,
                                                       adapters: AdapterFactory) -> None:
    first = adapters(confirmations=2)
    contract = first.deploy()
    anvil.set_automine(False)
    sent = first.anchor_checkpoint(NODE, 3, ROOT)
    raw = _journal_raw(tmp_path / "journal.sqlite", sent.key)
    first.close()
    anvil.drop_transaction(sent.tx_hash)  # never mined, and the node forgot it
    assert anvil.transaction(sent.tx_hash) is None and anvil.pool_size() == 0

    restarted = adapters(confirmations=2)
    assert restarted.contract_address == contract  # from the journal's deployment
    assert restarted.status(sent.key) == sent
    assert [(s.key, s.status) for s in restarted.refresh()] == [
        ("deploy", "included"), (sent.key, "pending")]  # the anchor was rebroadcast
    assert anvil.transaction(sent.tx_hash) is not None
    assert bytes.fromhex(anvil.rpc("eth_getRawTransactionByHash", sent.tx_hash)[2:]) == raw
    anvil.mine(1)
    [deploy, included] = restarted.refresh()
    assert deploy.status == "final"
    assert (included.status, included.tx_hash, included.nonce) == (
        "included", sent.tx_hash, sent.nonce)
    assert restarted.checkpoint_root(NODE, 3) == ROOT


def test_reorg_sends_an_anchor_back_to_pending_and_it_is_reincluded(
        anvil: AnvilNode, adapters: AdapterFactory, tmp_path: Path) -> None:
    adapter = adapters(confirmations=3)
    adapter.deploy()
    anvil.set_automine(False)
    anchored = adapter.anchor_checkpoint(NODE, 5, ROOT)
    anvil.mine(1)
    [before] = [s for s in adapter.refresh() if s.key == anchored.key]
    assert (before.status, before.confirmations) == ("included", 1)
    old_hash = anvil.rpc("eth_getBlockByNumber", hex(before.block_number or 0), False)["hash"]

    anvil.reorg(1)  # the anchor's block is replaced by an empty one
    assert anvil.rpc("eth_getTransactionReceipt", anchored.tx_hash) is None
    assert adapter.checkpoint_root(NODE, 5) == bytes(32)
    [after] = [s for s in adapter.refresh() if s.key == anchored.key]
    assert (after.status, after.block_number, after.tx_hash) == (
        "pending", None, anchored.tx_hash)
    assert after.error is not None and "left the canonical chain" in after.error
    assert anvil.transaction(anchored.tx_hash) is not None  # rebroadcast

    anvil.mine(1)
    [again] = [s for s in adapter.refresh() if s.key == anchored.key]
    assert (again.status, again.tx_hash, again.error) == ("included", anchored.tx_hash, None)
    new_hash = anvil.rpc("eth_getBlockByNumber", hex(again.block_number or 0), False)["hash"]
    assert new_hash != old_hash
    anvil.mine(2)
    assert [s.status for s in adapter.refresh() if s.key == anchored.key] == ["final"]
    assert adapter.checkpoint_root(NODE, 5) == ROOT
    raw = bytes.fromhex(anvil.rpc("eth_getRawTransactionByHash", anchored.tx_hash)[2:])
    assert raw == _journal_raw(tmp_path / "journal.sqlite", anchored.key)


def test_reverting_to_a_snapshot_brings_an_included_anchor_back(
        anvil: AnvilNode, adapters: AdapterFactory) -> None:
    adapter = adapters(confirmations=3)
    adapter.deploy()
    anvil.set_automine(False)
    anvil.mine(3)
    assert [s.status for s in adapter.refresh()] == ["final"]  # the deployment
    snapshot = anvil.snapshot()
    anchored = adapter.anchor_checkpoint(NODE, 6, ROOT)
    anvil.mine(2)
    assert [(s.status, s.confirmations) for s in adapter.refresh()] == [("included", 2)]
    anvil.revert(snapshot)  # the anchor's block is gone, and the chain is shorter
    assert [(s.status, s.tx_hash) for s in adapter.refresh()] == [
        ("pending", anchored.tx_hash)]
    anvil.mine(3)
    assert [(s.status, s.tx_hash) for s in adapter.refresh()] == [
        ("final", anchored.tx_hash)]
    assert adapter.checkpoint_root(NODE, 6) == ROOT
    assert [s.status for s in adapter.statuses()] == ["final", "final"]


def test_unreachable_chain_raises_chain_unavailable(tmp_path: Path, adapters: AdapterFactory
                                                   ) -> None:
    port_url = closed_port_url()
    secret_url = port_url.replace("http://", "http://user:hunter2@") + (
        "/v3/0123456789abcdef0123?apikey=topsecret")
    adapter = adapters(url=secret_url, timeout_s=2.0, contract_address="0x" + "ab" * 20)
    with pytest.raises(ChainUnavailable) as caught:
        adapter.anchor_checkpoint(NODE, 1, ROOT)
    message = str(caught.value)
    assert port_url.removeprefix("http://") in message and "unreachable" in message
    assert "hunter2" not in message and "0123456789abcdef0123" not in message
    assert "topsecret" not in message
    with pytest.raises(ChainUnavailable):
        adapter.refresh()
    report = adapter.chain_status()
    assert report["reachable"] is False and "unreachable" in report["error"]
    assert "hunter2" not in str(report)
    assert adapter.statuses() == []  # nothing was signed without nonce and fees


def test_a_journaled_but_unsent_transaction_is_not_lost(
        anvil: AnvilNode, adapters: AdapterFactory) -> None:
    contract = adapters(confirmations=1).deploy()
    anvil.set_automine(False)
    gate = RpcGate(anvil.url)
    try:
        gate.cut.add("eth_sendRawTransaction")  # the endpoint dies between signing and sending
        cut = adapters(url=gate.url, contract_address=contract, confirmations=1)
        with pytest.raises(ChainUnavailable, match="unreachable"):
            cut.anchor_checkpoint(NODE, 1, ROOT)
        with pytest.raises(ChainUnavailable):
            cut.anchor_checkpoint(NODE, 2, OTHER_ROOT)
        assert "eth_sendRawTransaction" in gate.seen
    finally:
        gate.close()
    journaled = cut.statuses()[1:]
    assert [(s.status, s.nonce) for s in journaled] == [("pending", 1), ("pending", 2)]
    assert all(anvil.transaction(s.tx_hash) is None for s in journaled)
    assert _nonce(anvil, cut.address) == 1

    live = adapters(contract_address=contract, confirmations=1)
    again = live.anchor_checkpoint(NODE, 1, ROOT)  # journaled: returned, not re-signed
    assert (again.tx_hash, again.nonce) == (journaled[0].tx_hash, 1)
    refreshed = live.refresh()
    assert [(s.status, s.tx_hash) for s in refreshed] == [
        ("pending", s.tx_hash) for s in journaled]
    assert all(anvil.transaction(s.tx_hash) is not None for s in journaled)  # rebroadcast
    anvil.mine(1)
    assert [s.status for s in live.refresh()] == ["final", "final"]
    assert live.checkpoint_root(NODE, 1) == ROOT
    assert live.checkpoint_root(NODE, 2) == OTHER_ROOT


def test_an_account_without_funds_gets_insufficient_funds(
        anvil: AnvilNode, adapters: AdapterFactory, tmp_path: Path) -> None:
    address = create_account_key(tmp_path / "empty.key")
    adapter = adapters(key=tmp_path / "empty.key", journal="empty.sqlite")
    with pytest.raises(InsufficientFunds) as caught:
        adapter.deploy()
    assert caught.value.address == address and caught.value.balance == 0
    assert caught.value.needed > 0
    assert address in str(caught.value) and f"{caught.value.needed} wei" in str(caught.value)
    assert adapter.statuses() == [] and _nonce(anvil, address) == 0


def test_a_value_beyond_the_balance_gets_insufficient_funds(
        anvil: AnvilNode, adapters: AdapterFactory) -> None:
    adapter = adapters()
    adapter.deploy()
    balance = anvil.balance(adapter.address)
    with pytest.raises(InsufficientFunds) as caught:
        adapter.post_epoch(1, ROOT, 1, balance + 1)
    assert caught.value.address == adapter.address
    assert caught.value.needed > caught.value.balance
    assert adapter.status("epoch:1") is None


def test_a_reverted_transaction_is_failed_with_its_error(
        anvil: AnvilNode, adapters: AdapterFactory) -> None:
    first = adapters(confirmations=1)
    contract = first.deploy()
    second = adapters(journal="second.sqlite", contract_address=contract, confirmations=1)
    anvil.set_automine(False)
    a = first.post_epoch(5, ROOT, 2, 1000)
    b = second.post_epoch(5, OTHER_ROOT, 3, 2000)  # same account, own journal: next nonce
    assert (a.status, b.status, b.nonce) == ("pending", "pending", a.nonce + 1)
    anvil.mine(1)
    assert [(s.key, s.status) for s in first.refresh()] == [("epoch:5", "final")]
    [failed] = second.refresh()
    assert (failed.status, failed.key) == ("failed", "epoch:5")
    assert failed.error == "EpochExists(epoch=5)"
    assert second.post_epoch(5, OTHER_ROOT, 3, 2000) == failed  # mined: not retried
    assert first.epoch(5) == {"root": ROOT, "leaf_count": 2, "total": 1000, "claimed": 0}


def test_only_the_operator_may_anchor(adapters: AdapterFactory, other_key_file: Path) -> None:
    contract = adapters().deploy()
    other = adapters(key=other_key_file, journal="other.sqlite", contract_address=contract)
    with pytest.raises(TransactionFailed) as caught:
        other.anchor_checkpoint(NODE, 1, ROOT)
    assert caught.value.error_name == "NotOperator"
    with pytest.raises(TransactionFailed, match="NotOperator"):
        other.post_epoch(1, ROOT, 1, 10)
    assert other.statuses() == []


def test_claims_through_the_adapter(anvil: AnvilNode, adapters: AdapterFactory,
                                    other_key_file: Path) -> None:
    operator = adapters(confirmations=1)
    contract = operator.deploy()
    payees = {bytes.fromhex(Account.create().address[2:]): 10**15 + i for i in range(3)}
    tree = PayoutTree(4, payees)
    operator.post_epoch(4, tree.root, tree.size, tree.total)
    assert _settled(operator, "epoch:4").status == "final"
    submitter = adapters(key=other_key_file, journal="submitter.sqlite",
                         contract_address=contract)
    for payee, amount in tree.entries:
        proof = tree.proof(payee)
        address = "0x" + payee.hex()
        before = anvil.balance(address)
        tx_hash = submitter.claim(4, address, amount, proof.index, proof.proof)
        assert anvil.rpc("eth_getTransactionReceipt", tx_hash)["status"] == "0x1"
        assert anvil.balance(address) - before == amount
        assert submitter.is_claimed(4, address) is True
        with pytest.raises(TransactionFailed) as caught:
            submitter.claim(4, address, amount, proof.index, proof.proof)
        assert caught.value.error_name == "AlreadyClaimed"
    assert operator.epoch(4)["claimed"] == tree.total

    payee, amount = tree.entries[0]
    proof = tree.proof(payee)
    address = "0x" + payee.hex()
    for args, name in (((4, address, amount + 1, proof.index, proof.proof), "AlreadyClaimed"),
                       ((7, address, amount, proof.index, proof.proof), "UnknownEpoch")):
        with pytest.raises(TransactionFailed) as caught:
            submitter.claim(*args)
        assert caught.value.error_name == name
    fresh = PayoutTree(8, {payee: amount, b"\x01" * 20: 5})
    operator.post_epoch(8, fresh.root, fresh.size, fresh.total)
    _settled(operator, "epoch:8")
    wrong = fresh.proof(payee)
    with pytest.raises(TransactionFailed) as caught:
        submitter.claim(8, address, amount, wrong.index, [bytes(32)] * len(wrong.proof))
    assert caught.value.error_name == "InvalidProof"
    assert submitter.is_claimed(8, address) is False


def test_a_journal_serves_one_account(tmp_path: Path, adapters: AdapterFactory,
                                      other_key_file: Path) -> None:
    adapters().close()
    with pytest.raises(SettlementError, match="belongs to account"):
        adapters(key=other_key_file)


def test_chain_status_reports_the_node(anvil: AnvilNode, adapters: AdapterFactory) -> None:
    adapter = adapters()
    contract = adapter.deploy()
    report = adapter.chain_status()
    assert report == {"reachable": True, "url": anvil.url, "chain_id": 31337,
                      "block": anvil.block_number(), "account": adapter.address,
                      "balance_wei": anvil.balance(adapter.address), "contract": contract}


def test_a_chain_without_base_fee_gets_legacy_transactions(tmp_path: Path) -> None:
    node = start_anvil("--hardfork", "berlin")
    try:
        key = write_key_file(tmp_path / "operator.key", node.accounts[0][1])
        with SettlementAdapter(node.url, key, tmp_path / "journal.sqlite",
                               confirmations=1) as adapter:
            adapter.deploy()
            node.set_automine(False)
            sent = adapter.anchor_checkpoint(NODE, 2, ROOT)
            tx = node.transaction(sent.tx_hash)
            assert tx is not None and tx["type"] == "0x0"
            assert int(tx["gasPrice"], 16) == int(node.rpc("eth_gasPrice"), 16)
            raw = bytes.fromhex(node.rpc("eth_getRawTransactionByHash", sent.tx_hash)[2:])
            assert decode_raw_pricing(raw) == (int(tx["gas"], 16), Fees(int(tx["gasPrice"], 16)))
            assert adapter.anchor_checkpoint(NODE, 2, ROOT) == sent  # legacy raw decoded
            node.mine(1)
            assert [s.status for s in adapter.refresh()] == ["final"]
            assert adapter.checkpoint_root(NODE, 2) == ROOT
    finally:
        node.stop()


def test_a_nonce_taken_by_another_transaction_fails_and_the_key_can_be_retried(
        anvil: AnvilNode, adapters: AdapterFactory) -> None:
    contract = adapters(confirmations=1).deploy()
    anvil.set_automine(False)
    gate = RpcGate(anvil.url)
    try:
        gate.cut.add("eth_sendRawTransaction")
        cut = adapters(url=gate.url, contract_address=contract, confirmations=1)
        with pytest.raises(ChainUnavailable):
            cut.anchor_checkpoint(NODE, 1, ROOT)
    finally:
        gate.close()
    lost = cut.status(f"checkpoint:{NODE.hex()}:1")
    assert lost is not None and lost.status == "pending"
    # The same account, through another journal, spends that nonce first.
    elsewhere = adapters(journal="elsewhere.sqlite", contract_address=contract,
                         confirmations=1)
    assert elsewhere.anchor_checkpoint(NODE, 9, OTHER_ROOT).nonce == lost.nonce
    anvil.mine(1)

    live = adapters(contract_address=contract, confirmations=1)
    [failed] = live.refresh()
    assert (failed.status, failed.block_number) == ("failed", None)
    assert failed.error is not None and "nonce too low" in failed.error
    retried = live.anchor_checkpoint(NODE, 1, ROOT)  # never mined: the key may be sent again
    assert retried.nonce == lost.nonce + 1 and retried.tx_hash != lost.tx_hash
    anvil.mine(1)
    assert [s.status for s in live.refresh()] == ["final"]
    assert live.checkpoint_root(NODE, 1) == ROOT
    assert {s.key.split("#")[0] for s in live.statuses()} == {"deploy", lost.key}
    assert [s.tx_hash for s in live.statuses() if "#" in s.key] == [lost.tx_hash]


def test_deploy_is_idempotent(anvil: AnvilNode, adapters: AdapterFactory) -> None:
    adapter = adapters()
    contract = adapter.deploy()
    nonce = _nonce(anvil, adapter.address)
    assert adapter.deploy() == contract
    assert adapters(journal="journal.sqlite").deploy() == contract  # after a restart too
    assert _nonce(anvil, adapter.address) == nonce
    assert len(bytes.fromhex(anvil.rpc("eth_getCode", contract, "latest")[2:])) > 1000


def test_missing_node_modules_fail_with_a_clear_message(monkeypatch: pytest.MonkeyPatch,
                                                        tmp_path: Path) -> None:
    monkeypatch.setattr(anvil_support, "ANVIL", tmp_path / "node_modules" / ".bin" / "anvil")
    with pytest.raises(AnvilError, match=r"run `make test`, or `npm ci`"):
        start_anvil()


# --- stuck transactions: replacement with higher fees ------------------------------------------


def _base_fee(anvil: AnvilNode) -> int:
    return int(anvil.rpc("eth_getBlockByNumber", "latest", False)["baseFeePerGas"], 16)


def _fees_of(anvil: AnvilNode, tx_hash: str) -> tuple[int, int]:
    """``(maxFeePerGas, maxPriorityFeePerGas)`` of a transaction the node knows."""
    tx = anvil.transaction(tx_hash)
    assert tx is not None
    return int(tx["maxFeePerGas"], 16), int(tx["maxPriorityFeePerGas"], 16)


def _signed_in_journal(path: Path, key: str) -> list[tuple[str, bytes]]:
    """``[(tx hash, raw)]`` of every transaction the journal holds for ``key``, oldest first."""
    with sqlite3.connect(path) as db:
        found = db.execute("SELECT tx_hash, raw FROM signed_txs WHERE key = ? ORDER BY seq",
                           (key,)).fetchall()
    db.close()
    return [(str(tx_hash), bytes(raw)) for tx_hash, raw in found]


def _price_out(anvil: AnvilNode, max_fee: int) -> None:
    """Mine a block whose base fee is four times ``max_fee``: a transaction offering
    ``max_fee`` is not included (anvil drops it from its pool) and is stuck."""
    anvil.rpc("anvil_setNextBlockBaseFeePerGas", hex(4 * max_fee))
    anvil.mine(1)
    assert _base_fee(anvil) > max_fee


def test_a_stuck_transaction_is_replaced_with_higher_fees_and_included(
        anvil: AnvilNode, adapters: AdapterFactory, tmp_path: Path) -> None:
    adapter = adapters(confirmations=1, replace_after_blocks=2)
    adapter.deploy()
    anvil.set_automine(False)
    sent = adapter.anchor_checkpoint(NODE, 4, ROOT)
    first_cap, first_tip = _fees_of(anvil, sent.tx_hash)

    _price_out(anvil, first_cap)
    [waiting] = adapter.refresh()  # one block: not stuck yet, the same bytes go out again
    assert (waiting.status, waiting.tx_hash) == ("pending", sent.tx_hash)
    assert waiting.error is not None and "base fee" in waiting.error  # anvil refused them

    anvil.mine(1)
    [replaced] = adapter.refresh()  # two blocks without it: replaced
    assert replaced.status == "pending" and replaced.error is None
    assert replaced.tx_hash != sent.tx_hash and replaced.nonce == sent.nonce
    tx = anvil.transaction(replaced.tx_hash)
    assert tx is not None and int(tx["nonce"], 16) == sent.nonce
    cap, tip = _fees_of(anvil, replaced.tx_hash)
    assert cap * 100 >= first_cap * 110 and tip * 100 >= first_tip * 110
    assert _base_fee(anvil) <= cap <= adapter.max_fee_per_gas
    journal = tmp_path / "journal.sqlite"
    assert [tx_hash for tx_hash, _ in _signed_in_journal(journal, sent.key)] == [
        sent.tx_hash, replaced.tx_hash]
    assert _signed_in_journal(journal, sent.key)[1][1] == bytes.fromhex(
        anvil.rpc("eth_getRawTransactionByHash", replaced.tx_hash)[2:])
    assert _journal_raw(journal, sent.key) == _signed_in_journal(journal, sent.key)[1][1]

    anvil.mine(1)
    [final] = adapter.refresh()
    assert (final.status, final.tx_hash, final.nonce) == ("final", replaced.tx_hash, sent.nonce)
    assert anvil.rpc("eth_getTransactionReceipt", replaced.tx_hash)["status"] == "0x1"
    assert adapter.checkpoint_root(NODE, 4) == ROOT


def test_replacements_stop_at_the_maximum_fee_and_say_so(
        anvil: AnvilNode, adapters: AdapterFactory, tmp_path: Path) -> None:
    adapter = adapters(confirmations=1, replace_after_blocks=1)
    adapter.deploy()
    anvil.set_automine(False)
    sent = adapter.anchor_checkpoint(NODE, 5, ROOT)
    first_cap, _ = _fees_of(anvil, sent.tx_hash)
    adapter.max_fee_per_gas = maximum = first_cap * 115 // 100  # room for one +10% only

    _price_out(anvil, first_cap)
    [replaced] = adapter.refresh()  # at the maximum, still below the base fee: refused
    assert replaced.tx_hash != sent.tx_hash and replaced.nonce == sent.nonce
    assert replaced.error is not None and "base fee" in replaced.error
    signed = _signed_in_journal(tmp_path / "journal.sqlite", sent.key)
    assert [tx_hash for tx_hash, _ in signed] == [sent.tx_hash, replaced.tx_hash]
    assert decode_raw_pricing(signed[1][1])[1].max_fee == maximum

    anvil.mine(1)
    for _ in range(2):
        [capped] = adapter.refresh()
        assert (capped.status, capped.tx_hash) == ("pending", replaced.tx_hash)
        assert capped.error is not None and "configured maximum" in capped.error
        assert f"{maximum} wei" in capped.error
        anvil.mine(1)
    assert adapter.status(sent.key) == capped  # the error is in the status, not only returned
    assert len(_signed_in_journal(tmp_path / "journal.sqlite", sent.key)) == 2

    anvil.rpc("anvil_setNextBlockBaseFeePerGas", hex(first_cap // 4))  # fees fall again
    anvil.mine(1)
    [rebroadcast] = adapter.refresh()  # no new signature: the newest one goes out again
    assert rebroadcast.tx_hash == replaced.tx_hash
    assert anvil.transaction(replaced.tx_hash) is not None
    anvil.mine(1)
    [final] = adapter.refresh()
    assert (final.status, final.tx_hash, final.error) == ("final", replaced.tx_hash, None)
    assert len(_signed_in_journal(tmp_path / "journal.sqlite", sent.key)) == 2
    assert adapter.checkpoint_root(NODE, 5) == ROOT


def test_whichever_signature_is_included_is_recognised_after_a_restart(
        anvil: AnvilNode, adapters: AdapterFactory, tmp_path: Path) -> None:
    first = adapters(confirmations=2, replace_after_blocks=1)
    first.deploy()
    anvil.set_automine(False)
    sent = first.anchor_checkpoint(NODE, 6, ROOT)
    original = _journal_raw(tmp_path / "journal.sqlite", sent.key)
    _price_out(anvil, _fees_of(anvil, sent.tx_hash)[0])
    [replaced] = [s for s in first.refresh() if s.key == sent.key]
    assert replaced.tx_hash != sent.tx_hash
    first.close()

    # Fees fall and the original, still out there somewhere, is mined instead.
    anvil.drop_transaction(replaced.tx_hash)
    anvil.rpc("anvil_setNextBlockBaseFeePerGas", hex(_base_fee(anvil) // 100))
    anvil.mine(1)
    anvil.rpc("eth_sendRawTransaction", "0x" + original.hex())
    anvil.mine(1)

    restarted = adapters(confirmations=2, replace_after_blocks=1)
    [included] = [s for s in restarted.refresh() if s.key == sent.key]
    assert (included.status, included.tx_hash, included.nonce) == (
        "included", sent.tx_hash, sent.nonce)
    assert _journal_raw(tmp_path / "journal.sqlite", sent.key) == original
    anvil.mine(1)
    assert [(s.status, s.tx_hash) for s in restarted.refresh()] == [("final", sent.tx_hash)]
    assert anvil.transaction(replaced.tx_hash) is None  # never rebroadcast: its nonce is spent
    assert restarted.checkpoint_root(NODE, 6) == ROOT


def test_a_transaction_behind_an_earlier_nonce_waits_for_its_turn(
        anvil: AnvilNode, adapters: AdapterFactory) -> None:
    adapter = adapters(confirmations=1, replace_after_blocks=1)
    adapter.deploy()
    anvil.set_automine(False)
    first = adapter.anchor_checkpoint(NODE, 1, ROOT)
    second = adapter.anchor_checkpoint(NODE, 2, OTHER_ROOT)
    assert second.nonce == first.nonce + 1
    _price_out(anvil, max(_fees_of(anvil, first.tx_hash)[0],
                          _fees_of(anvil, second.tx_hash)[0]))

    # Both are stuck, but only the first is next in line: a higher fee would not help the
    # second, which waits for the first whatever it pays.
    [first_now, second_now] = adapter.refresh()
    assert first_now.tx_hash != first.tx_hash and first_now.status == "pending"
    assert (second_now.tx_hash, second_now.status) == (second.tx_hash, "pending")
    anvil.mine(1)
    [first_now, second_now] = adapter.refresh()  # its turn now: replaced too
    assert (first_now.status, first_now.nonce) == ("final", first.nonce)
    assert second_now.tx_hash != second.tx_hash and second_now.status == "pending"
    anvil.mine(1)
    assert [s.status for s in adapter.refresh()] == ["final"]
    assert adapter.checkpoint_root(NODE, 1) == ROOT
    assert adapter.checkpoint_root(NODE, 2) == OTHER_ROOT


def test_fees_above_the_maximum_are_refused_before_signing(
        anvil: AnvilNode, adapters: AdapterFactory) -> None:
    adapter = adapters(confirmations=1)
    adapter.deploy()
    anvil.set_automine(False)
    base = _base_fee(anvil)
    nonce = _nonce(anvil, adapter.address)
    adapter.max_fee_per_gas = base - 1
    with pytest.raises(FeeLimitReached, match="above the configured maximum") as caught:
        adapter.anchor_checkpoint(NODE, 1, ROOT)
    assert f"{base} wei" in str(caught.value)
    assert adapter.status(f"checkpoint:{NODE.hex()}:1") is None
    assert _nonce(anvil, adapter.address) == nonce
    adapter.max_fee_per_gas = base + 1  # room above the base fee: signed, capped there
    sent = adapter.anchor_checkpoint(NODE, 1, ROOT)
    cap, tip = _fees_of(anvil, sent.tx_hash)
    assert cap == base + 1 and tip <= cap
    with pytest.raises(ValueError, match="positive"):
        adapter.max_fee_per_gas = 0
