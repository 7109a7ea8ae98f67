"""The JSON-RPC client against a stub node: refusal codes, asked only where they mean
something."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from eth_account import Account

from sync.settlement.calls import ContractCalls
from sync.settlement.errors import Refusal, TransactionFailed
from sync.settlement.rpc import RpcClient


class _StubNode:
    """A JSON-RPC endpoint that answers from ``answers`` (method -> result, or an ``error``
    dict under ``("error", method)``) and records the methods asked."""

    def __init__(self, answers: dict[Any, Any]) -> None:
        self.asked: list[str] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                stub.asked.append(request["method"])
                reply: dict[str, Any] = {"jsonrpc": "2.0", "id": request["id"]}
                if ("error", request["method"]) in answers:
                    reply["error"] = answers[("error", request["method"])]
                else:
                    reply["result"] = answers[request["method"]]
                body = json.dumps(reply).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                return None

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,),
                                        daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


@pytest.mark.parametrize(("software", "error", "expected"), [
    ("besu/v24.1.0/linux-x86_64/openjdk-java-17", {"code": -32001, "message": "Nonce too low"},
     Refusal.NONCE_TOO_LOW),
    ("besu/v24.1.0/linux-x86_64/openjdk-java-17",
     {"code": -32009, "message": "Gas price below current base fee"}, Refusal.FEE_TOO_LOW),
    ("Geth/v1.14.0-stable/linux-amd64/go1.22", {"code": -32001, "message": "Nonce too low?"},
     Refusal.NONCE_TOO_LOW),
    ("Geth/v1.14.0-stable/linux-amd64/go1.22", {"code": -32001, "message": "not found"},
     Refusal.OTHER),
])
def test_the_client_reads_refusal_codes_of_the_node_software_that_defines_them(
        software: str, error: dict[str, Any], expected: Refusal) -> None:
    stub = _StubNode({"web3_clientVersion": software, ("error", "eth_sendRawTransaction"): error})
    try:
        client = RpcClient(stub.url, 5.0, ContractCalls([]), Account.create())
        with pytest.raises(TransactionFailed) as caught:
            client.send_raw(b"\x02\x01")
        assert caught.value.refusal is expected
        assert error["message"] in str(caught.value)
        with pytest.raises(TransactionFailed):
            client.send_raw(b"\x02\x01")
        assert stub.asked.count("web3_clientVersion") == 1  # asked once, and only for a code
        client.close()
    finally:
        stub.close()


def test_a_node_without_a_code_of_its_own_is_not_asked_what_it_runs() -> None:
    stub = _StubNode({("error", "eth_sendRawTransaction"): {
        "code": -32000, "message": "replacement transaction underpriced"}})
    try:
        client = RpcClient(stub.url, 5.0, ContractCalls([]), Account.create())
        with pytest.raises(TransactionFailed) as caught:
            client.send_raw(b"\x02\x01")
        assert caught.value.refusal is Refusal.REPLACEMENT_UNDERPRICED
        assert stub.asked == ["eth_sendRawTransaction"]
        client.close()
    finally:
        stub.close()
