"""EdgedSettlement: the committed artifact, and the contract itself on a real anvil node.

Transactions here come from anvil's unlocked dev accounts (``eth_sendTransaction``); the
adapter's own signing and journaling are tested in ``test_settlement.py``.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from eth_account import Account
from eth_utils import keccak
from web3 import HTTPProvider, Web3
from web3.contract import Contract
from web3.exceptions import ContractCustomError
from web3.logs import DISCARD

from sync import merkle
from sync.settlement.contracts import compile as compile_module
from sync.settlement.contracts import load_artifact
from sync.settlement.contracts.compile import (
    ARTIFACT_PATH,
    EVM_VERSION,
    OPTIMIZER,
    PINNED_COMPILER,
    REPO_ROOT,
    SOURCE_PATH,
    check,
)
from sync.settlement.payout import PayoutTree, payout_leaf
from tests.support.anvil import AnvilNode

NODE = b"\x11" * 32
ROOT_A = hashlib.sha256(b"root a").digest()
ROOT_B = hashlib.sha256(b"root b").digest()


# --- the artifact ------------------------------------------------------------------------------


def test_committed_artifact_matches_a_fresh_compile() -> None:
    done = subprocess.run([sys.executable, "-m", "sync.settlement.contracts.compile", "--check"],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
                          check=False, env={**os.environ, "PYTHONWARNINGS": "error"})
    assert done.returncode == 0, done.stderr
    assert "matches a fresh compile" in done.stdout


def test_artifact_pins_compiler_evm_and_optimizer() -> None:
    artifact = load_artifact()
    assert artifact["contract"] == "EdgedSettlement"
    assert artifact["compiler"].startswith(PINNED_COMPILER + "+commit.")
    assert artifact["evmVersion"] == EVM_VERSION == "paris"
    assert artifact["optimizer"] == OPTIMIZER == {"enabled": True, "runs": 200}
    assert artifact["sourceSha256"] == hashlib.sha256(SOURCE_PATH.read_bytes()).hexdigest()
    assert f"pragma solidity {PINNED_COMPILER};" in SOURCE_PATH.read_text()
    assert list(artifact) == ["contract", "compiler", "evmVersion", "optimizer",
                              "sourceSha256", "abi", "bytecode"]
    assert ARTIFACT_PATH.read_text().endswith("}\n")


def test_check_fails_and_names_what_drifted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    edited = tmp_path / "EdgedSettlement.sol"
    edited.write_bytes(SOURCE_PATH.read_bytes().replace(b"uint64 fn = index;",
                                                        b"uint64 fn = index; // edited"))
    monkeypatch.setattr(compile_module, "SOURCE_PATH", edited)
    assert compile_module.main(["--check"]) == 1
    message = capsys.readouterr().err
    assert "EdgedSettlement.json differs from a fresh compile in: bytecode, sourceSha256" in message
    assert "run `python -m sync.settlement.contracts.compile`" in message
    assert check(tmp_path / "absent.json") == "absent.json is missing"


def test_a_missing_solc_fails_with_a_clear_message(monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path: Path) -> None:
    monkeypatch.setattr(compile_module, "SOLC_PACKAGE", tmp_path / "node_modules" / "solc")
    with pytest.raises(compile_module.CompileError, match="run `npm ci`"):
        compile_module.compile_contract()


# --- the contract on anvil ---------------------------------------------------------------------


class Chain:
    """web3 over anvil with the contract deployed by dev account 0 (the operator)."""

    def __init__(self, node: AnvilNode) -> None:
        self.node = node
        self.session = requests.Session()
        self.w3 = Web3(HTTPProvider(node.url, request_kwargs={"timeout": 10},
                                    session=self.session))
        self.operator = node.accounts[0][0]
        self.other = node.accounts[1][0]
        artifact = load_artifact()
        factory = self.w3.eth.contract(abi=artifact["abi"], bytecode=artifact["bytecode"])
        receipt = self.wait(factory.constructor().transact({"from": self.operator}))
        self.contract: Contract = self.w3.eth.contract(address=receipt["contractAddress"],
                                                       abi=artifact["abi"])
        self.errors = {item["name"]: item for item in artifact["abi"] if item["type"] == "error"}

    def wait(self, tx_hash: Any) -> Any:
        receipt = self.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=10,
                                                           poll_latency=0.02)
        assert receipt["status"] == 1
        return receipt

    def send(self, call: Any, sender: str | None = None, value: int = 0) -> Any:
        return self.wait(call.transact({"from": sender or self.operator, "value": value}))

    def events(self, receipt: Any, name: str) -> list[dict[str, Any]]:
        event = getattr(self.contract.events, name)()
        return [dict(log["args"]) for log in event.process_receipt(receipt, errors=DISCARD)]

    def expect_revert(self, name: str, call: Any, sender: str | None = None,
                      value: int = 0) -> bytes:
        """Send ``call``; it must revert with custom error ``name``. Returns the data."""
        inputs = ",".join(arg["type"] for arg in self.errors[name]["inputs"])
        selector = keccak(text=f"{name}({inputs})")[:4]
        with pytest.raises(ContractCustomError) as caught:
            call.transact({"from": sender or self.operator, "value": value})
        data = bytes.fromhex(str(caught.value.data)[2:])
        assert data[:4] == selector, f"expected {name}, got 0x{data[:4].hex()}"
        return data

    def close(self) -> None:
        self.session.close()


@pytest.fixture
def chain(anvil: AnvilNode) -> Iterator[Chain]:
    deployed = Chain(anvil)
    yield deployed
    deployed.close()


def test_record_checkpoint_is_idempotent_on_node_and_size(chain: Chain) -> None:
    record = chain.contract.functions.recordCheckpoint
    first = chain.send(record(NODE, 4, ROOT_A))
    again = chain.send(record(NODE, 4, ROOT_A))
    assert chain.events(first, "CheckpointRecorded") == [
        {"node": NODE, "size": 4, "root": ROOT_A}]
    assert chain.events(again, "CheckpointRecorded") == []
    assert chain.events(again, "Equivocation") == []
    assert chain.contract.functions.checkpointRoot(NODE, 4).call() == ROOT_A
    assert chain.contract.functions.recordCheckpoint(NODE, 4, ROOT_A).call(
        {"from": chain.operator}) is True
    chain.expect_revert("EmptyCheckpoint", record(NODE, 0, ROOT_A))
    chain.expect_revert("EmptyCheckpoint", record(NODE, 5, bytes(32)))


def test_conflicting_root_is_an_equivocation_and_freezes_the_node(chain: Chain) -> None:
    record = chain.contract.functions.recordCheckpoint
    chain.send(record(NODE, 4, ROOT_A))
    other_node = b"\x22" * 32
    chain.send(record(other_node, 4, ROOT_A))
    assert record(NODE, 4, ROOT_B).call({"from": chain.operator}) is False
    conflict = chain.send(record(NODE, 4, ROOT_B))
    assert chain.events(conflict, "Equivocation") == [
        {"node": NODE, "size": 4, "recordedRoot": ROOT_A, "conflictingRoot": ROOT_B}]
    assert chain.events(conflict, "CheckpointRecorded") == []
    assert chain.contract.functions.checkpointRoot(NODE, 4).call() == ROOT_A
    assert chain.contract.functions.frozen(NODE).call() is True
    assert chain.contract.functions.frozen(other_node).call() is False
    for size, root in ((4, ROOT_A), (8, ROOT_B)):
        data = chain.expect_revert("NodeFrozen", record(NODE, size, root))
        assert data[4:] == NODE
    chain.send(record(other_node, 8, ROOT_B))  # another node is not affected


def test_only_the_operator_records_and_posts(chain: Chain) -> None:
    functions = chain.contract.functions
    chain.expect_revert("NotOperator", functions.recordCheckpoint(NODE, 1, ROOT_A), chain.other)
    chain.expect_revert("NotOperator", functions.postEpoch(1, ROOT_A, 1), chain.other, 5)
    assert functions.operator().call() == chain.operator
    assert functions.checkpointRoot(NODE, 1).call() == bytes(32)
    assert functions.epochs(1).call()[1] == 0


def test_post_epoch_stores_and_refuses_a_second_post(chain: Chain) -> None:
    functions = chain.contract.functions
    receipt = chain.send(functions.postEpoch(3, ROOT_A, 5), value=12345)
    assert chain.events(receipt, "EpochPosted") == [
        {"epoch": 3, "root": ROOT_A, "leafCount": 5, "total": 12345}]
    assert functions.epochs(3).call() == [ROOT_A, 5, 12345, 0]
    assert chain.w3.eth.get_balance(chain.contract.address) == 12345
    data = chain.expect_revert("EpochExists", functions.postEpoch(3, ROOT_B, 2), value=1)
    assert int.from_bytes(data[4:], "big") == 3
    chain.expect_revert("EmptyEpoch", functions.postEpoch(4, ROOT_A, 0))
    assert functions.epochs(3).call() == [ROOT_A, 5, 12345, 0]


def _payees(count: int) -> dict[bytes, int]:
    return {bytes.fromhex(Account.create().address[2:]): 10**15 * (i + 1) + i
            for i in range(count)}


def test_every_payee_claims_exactly_its_amount_once(chain: Chain) -> None:
    tree = PayoutTree(9, _payees(5))
    functions = chain.contract.functions
    chain.send(functions.postEpoch(9, tree.root, tree.size), value=tree.total)
    paid = 0
    for payee, amount in tree.entries:
        proof = tree.proof(payee)
        address = Web3.to_checksum_address(payee)
        before = chain.w3.eth.get_balance(address)
        receipt = chain.send(functions.claim(9, address, amount, proof.index, proof.proof),
                             sender=chain.other)  # anyone may submit; the payee is paid
        assert chain.w3.eth.get_balance(address) - before == amount
        assert chain.events(receipt, "Claimed") == [
            {"epoch": 9, "payee": address, "amount": amount}]
        assert functions.claimed(9, address).call() is True
        paid += amount
        data = chain.expect_revert(
            "AlreadyClaimed", functions.claim(9, address, amount, proof.index, proof.proof),
            chain.other)
        assert Web3.to_checksum_address(data[-20:]) == address
    assert paid == tree.total
    assert functions.epochs(9).call()[3] == tree.total
    assert chain.w3.eth.get_balance(chain.contract.address) == 0


def test_claims_with_bad_proofs_or_epochs_revert(chain: Chain) -> None:
    tree = PayoutTree(2, _payees(5))
    functions = chain.contract.functions
    chain.send(functions.postEpoch(2, tree.root, tree.size), value=tree.total)
    payee, amount = tree.entries[2]
    address = Web3.to_checksum_address(payee)
    proof = tree.proof(payee)
    tampered = list(proof.proof)
    tampered[1] = bytes([tampered[1][0] ^ 1]) + tampered[1][1:]
    bad_claims = {
        "wrong amount": (2, address, amount + 1, proof.index, proof.proof),
        "wrong index": (2, address, amount, proof.index + 1, proof.proof),
        "index past the tree": (2, address, amount, tree.size, proof.proof),
        "tampered proof": (2, address, amount, proof.index, tampered),
        "short proof": (2, address, amount, proof.index, proof.proof[:-1]),
        "another payee's proof": (2, address, amount, proof.index,
                                  tree.proof(tree.entries[0][0]).proof),
    }
    for label, args in bad_claims.items():
        try:
            chain.expect_revert("InvalidProof", functions.claim(*args), chain.other)
        except AssertionError as exc:
            raise AssertionError(f"{label}: {exc}") from exc
    data = chain.expect_revert(
        "UnknownEpoch", functions.claim(3, address, amount, proof.index, proof.proof),
        chain.other)
    assert int.from_bytes(data[4:], "big") == 3
    assert functions.claimed(2, address).call() is False
    chain.send(functions.claim(2, address, amount, proof.index, proof.proof))


def test_a_root_promising_more_than_the_total_cannot_overdraw(chain: Chain) -> None:
    tree = PayoutTree(5, _payees(2))
    functions = chain.contract.functions
    (first, first_amount), (second, second_amount) = tree.entries
    chain.send(functions.postEpoch(5, tree.root, tree.size), value=tree.total - 1)
    p1, p2 = tree.proof(first), tree.proof(second)
    chain.send(functions.claim(5, Web3.to_checksum_address(first), first_amount, p1.index,
                               p1.proof))
    chain.expect_revert("ExceedsEpochTotal", functions.claim(
        5, Web3.to_checksum_address(second), second_amount, p2.index, p2.proof))


def _python_verifies(leaf: bytes, index: int, size: int, proof: list[bytes],
                     root: bytes) -> bool:
    try:
        merkle.verify_inclusion(leaf, index, size, proof, root)
    except merkle.ProofError:
        return False
    return True


def test_verify_inclusion_agrees_with_the_python_verifier(chain: Chain) -> None:
    verify = chain.contract.functions.verifyInclusion
    checked = rejected = 0
    for size in range(1, 10):
        leaves = [payout_leaf(1, bytes([i + 1]) * 20, i + 1) for i in range(size)]
        store = merkle.MemorySubtrees(leaves)
        root = store.root()
        for index in range(size):
            proof = merkle.inclusion_proof(index, size, store)
            leaf = leaves[index]
            assert verify(leaf, index, size, proof, root).call() is True, (size, index)
            cases = [(leaf, index, size, proof, ROOT_A),
                     (ROOT_B, index, size, proof, root),
                     (leaf, (index + 1) % size, size, proof, root),
                     (leaf, index, size + 1, proof, root),
                     (leaf, index, size, [*proof, ROOT_A], root),
                     (leaf, size, size, proof, root)]
            if proof:
                flipped = bytes([proof[-1][0] ^ 0x80]) + proof[-1][1:]
                cases += [(leaf, index, size, proof[:-1], root),
                          (leaf, index, size, [*proof[:-1], flipped], root)]
            for case in cases:
                expected = _python_verifies(*case)
                assert verify(*case).call() is expected, (size, index, case[1:3], len(case[3]))
                checked += 1
                rejected += not expected
    assert checked > 300
    assert rejected > checked * 3 // 4  # the variants are mostly invalid, not all accepted


def test_artifact_deploys_with_the_expected_interface(chain: Chain) -> None:
    code = chain.w3.eth.get_code(chain.contract.address)
    assert len(code) > 1000
    names = {item.get("name") for item in json.loads(ARTIFACT_PATH.read_text())["abi"]}
    assert {"recordCheckpoint", "postEpoch", "claim", "verifyInclusion", "AlreadyClaimed",
            "InvalidProof", "NotOperator", "NodeFrozen", "Equivocation"} <= names
