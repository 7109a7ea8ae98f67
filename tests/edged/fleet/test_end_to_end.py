"""End to end, all real: three `edged serve` nodes on the tiny llama model serve traffic and
push to an `edged fleet serve`; an epoch closes; its checkpoints and payout root are
anchored on a real anvil chain until final; every payee claims exactly its amount, the
claims sum to the fees, and a second or a wrong claim fails."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edged.devtools.daemon import Daemon, clean_environment
from tests.conftest import TINY_CONTEXT
from tests.support.anvil import AnvilNode
from tests.support.cluster import own_log, serve_traffic

pytestmark = [pytest.mark.subprocess, pytest.mark.chain]
OWNER = "0x" + "a1" * 20
OPERATORS = ["0x" + f"b{i}" * 20 for i in range(1, 4)]
CONFIRMATIONS = 3



def _wait(condition: Any, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _fees(node: Daemon) -> int:
    receipts = node.request_json("GET", "/v1/receipts?limit=1000")["body"]["data"]
    return sum(int(receipt["fee"]) for receipt in receipts)


@pytest.fixture
def fleet_and_nodes(tmp_path: Path, operator_key_file: Path,
                    tiny_model_file: Path, anvil: AnvilNode,
                    ) -> Iterator[tuple[Daemon, list[Daemon]]]:
    operator_key = operator_key_file
    fleet = Daemon(tmp_path / "fleet" / "data", command=("fleet", "serve"), extra_args=(),
                   env=clean_environment(EDGED_CHAIN_URL=anvil.url,
                                         EDGED_CHAIN_ACCOUNT_KEY_FILE=str(operator_key),
                                         EDGED_CHAIN_CONFIRMATIONS=str(CONFIRMATIONS),
                                         EDGED_SETTLE_INTERVAL="3600"))
    nodes = [Daemon(tmp_path / f"node{i}" / "data",
                    env=clean_environment(EDGED_FLEET_URL=fleet.url, EDGED_SYNC_INTERVAL="0.5",
                                          EDGED_CHECKPOINT_INTERVAL="0.5",
                                          EDGED_OPERATOR_ID=OPERATORS[i]))
             for i in range(3)]
    try:
        fleet.start()
        for node in nodes:
            node.start()
            node.cli("models", "add", str(tiny_model_file), "--name", "tiny",
                     "--context-length", str(TINY_CONTEXT), "--chat-format", "none",
                     "--owner", OWNER,
                     "--price", "request=1000", "--price", "output_per_1k=333")
        yield fleet, nodes
    finally:
        for daemon in (*nodes, fleet):
            daemon.stop()


def test_three_nodes_to_fleet_to_chain_to_claims(fleet_and_nodes: tuple[Daemon, list[Daemon]],
                                                 anvil: AnvilNode, tmp_path: Path,
                                                 other_key_file: Path) -> None:
    from sync.settlement.adapter import SettlementAdapter, TransactionFailed

    fleet, nodes = fleet_and_nodes
    contract = json.loads(fleet.cli("fleet", "deploy-contract").stdout)["contract"]
    fleet_key = fleet.cli("fleet", "key").stdout.strip()
    for index, node in enumerate(nodes):
        node.cli("peers", "trust", fleet_key)
        node_key, _ = own_log(node)
        fleet.cli("fleet", "enroll", node_key, "--label", f"node-{index}")
        serve_traffic(node, 2 + index)

    logs = dict(own_log(node) for node in nodes)
    assert sorted(logs.values()) == [2, 3, 4]

    def collected() -> bool:
        held = {n["node"]: n["size"] for n in fleet.request_json("GET", "/fleet/nodes")["body"]
                ["nodes"]}
        return held == logs

    _wait(collected, "the fleet to hold every node's receipts")
    assert "node-0" in fleet.cli("fleet", "nodes").stdout
    fleet.cli("fleet", "payees", "set", "acme#team/x?y", "0x" + "c3" * 20)  # ids go escaped
    assert json.loads(fleet.cli("fleet", "payees", "list").stdout) == {
        "acme#team/x?y": "0x" + "c3" * 20}

    epoch = json.loads(fleet.cli("fleet", "epochs", "--close").stdout)
    fees = sum(_fees(node) for node in nodes)
    assert epoch["receipts"] == 9 and epoch["total"] == fees > 0
    assert epoch["unresolved"] == [] and epoch["leaf_count"] == 4  # owner + 3 operators
    plan = json.loads(fleet.cli("fleet", "settle").stdout)["plan"]
    assert [a["action"] for a in plan].count("recordCheckpoint") == 3

    fleet.cli("fleet", "settle", "--now")
    anvil.mine(CONFIRMATIONS)
    fleet.cli("fleet", "settle", "--now")  # refreshes: everything is final now
    summary = fleet.request_json("GET", "/fleet/epochs/1")["body"]
    assert summary["settlement"] == "final", summary
    status = fleet.request_json("GET", "/fleet/settlement")["body"]
    assert {t["status"] for t in status["transactions"]} == {"final"}

    with SettlementAdapter(anvil.url, other_key_file, tmp_path / "claimer-journal.sqlite3",
                           contract_address=contract, confirmations=1) as chain:
        for cp in summary["checkpoints"]:
            assert chain.checkpoint_root(bytes.fromhex(cp["origin"]), cp["end"]).hex() \
                == cp["root"]
        assert chain.epoch(1)["total"] == fees

        claimed = 0
        for payee in summary["payees"]:
            proof = fleet.request_json("GET", f"/fleet/epochs/1/proof/{payee['address']}")
            proof = proof["body"]
            amount = int(proof["amount"])
            assert amount == payee["amount"]
            hashes = [bytes.fromhex(h[2:]) for h in proof["proof"]]
            with pytest.raises(TransactionFailed, match="InvalidProof"):
                chain.claim(1, payee["address"], amount + 1, proof["index"], hashes)
            with pytest.raises(TransactionFailed, match="InvalidProof"):
                chain.claim(1, payee["address"], amount, proof["index"], hashes[::-1])
            before = anvil.balance(payee["address"])
            chain.claim(1, payee["address"], amount, proof["index"], hashes)
            assert anvil.balance(payee["address"]) - before == amount
            claimed += amount
            with pytest.raises(TransactionFailed, match="AlreadyClaimed"):
                chain.claim(1, payee["address"], amount, proof["index"], hashes)
        assert claimed == fees == chain.epoch(1)["claimed"]
