"""A real local EVM node for tests: anvil from the npm package ``@foundry-rs/anvil``.

:func:`start_anvil` runs ``node_modules/.bin/anvil`` on a free loopback port (in its own
process group, so that stopping it also stops the native binary behind the npm wrapper),
waits until ``eth_chainId`` answers and returns an :class:`AnvilNode`. The dev accounts come
from the standard mnemonic, passed explicitly and derived here with eth_account, so nothing
is parsed from anvil's output.

:class:`RpcGate` is a small HTTP forwarder in front of a node that can cut chosen JSON-RPC
methods (the connection is closed without an answer), to simulate an endpoint that goes
away at a chosen moment.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
from functools import cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, Any

REPO_ROOT = Path(__file__).resolve().parents[2]
ANVIL = REPO_ROOT / "node_modules" / ".bin" / "anvil"
MNEMONIC = "test test test test test test test test test test test junk"
CHAIN_ID = 31337
DEV_ACCOUNTS = 5
START_TIMEOUT_S = 20.0


class AnvilError(RuntimeError):
    """anvil is missing, did not start, or answered a JSON-RPC error."""


@cache
def dev_keys(count: int = DEV_ACCOUNTS) -> tuple[tuple[str, str], ...]:
    """``((address, private key hex), ...)`` of the first ``count`` accounts of
    :data:`MNEMONIC` (BIP-44 ``m/44'/60'/0'/0/i``), the accounts anvil funds."""
    from eth_account import Account

    Account.enable_unaudited_hdwallet_features()
    derived = [Account.from_mnemonic(MNEMONIC, account_path=f"m/44'/60'/0'/0/{i}")
               for i in range(count)]
    return tuple((str(acct.address), "0x" + bytes(acct.key).hex()) for acct in derived)


def rpc_call(url: str, method: str, params: list[Any] | None = None,
             timeout_s: float = 10.0) -> Any:
    """One JSON-RPC call; returns ``result`` or raises :class:`AnvilError`."""
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method,
                       "params": params or []}).encode()
    request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        answer = json.loads(response.read())
    if "error" in answer:
        raise AnvilError(f"{method}: {answer['error']}")
    return answer.get("result")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class AnvilNode:
    """A running anvil: ``url``, funded dev ``accounts`` (``[(address, key hex)]``),
    helpers over anvil's test RPC, and :meth:`stop`."""

    def __init__(self, process: subprocess.Popen[bytes], port: int, log: IO[bytes]) -> None:
        self.process = process
        self.port = port
        self._log = log
        self.url = f"http://127.0.0.1:{port}"
        self.accounts = list(dev_keys())

    def rpc(self, method: str, *params: Any) -> Any:
        """Call ``method`` on this node."""
        return rpc_call(self.url, method, list(params))

    def block_number(self) -> int:
        """The head's block number."""
        return int(self.rpc("eth_blockNumber"), 16)

    def balance(self, address: str) -> int:
        """Balance of ``address`` in wei at the head."""
        return int(self.rpc("eth_getBalance", address, "latest"), 16)

    def mine(self, blocks: int = 1) -> None:
        """Mine ``blocks`` blocks now (with whatever the pool holds)."""
        self.rpc("anvil_mine", hex(blocks))

    def set_automine(self, enabled: bool) -> None:
        """Mine a block per transaction (anvil's default) or only on :meth:`mine`."""
        self.rpc("evm_setAutomine", enabled)

    def snapshot(self) -> str:
        """Snapshot the chain state; :meth:`revert` goes back to it."""
        return str(self.rpc("evm_snapshot"))

    def revert(self, snapshot_id: str) -> None:
        """Go back to a snapshot (blocks and transactions after it are gone)."""
        if self.rpc("evm_revert", snapshot_id) is not True:
            raise AnvilError(f"evm_revert({snapshot_id}) failed")

    def reorg(self, depth: int) -> None:
        """Replace the last ``depth`` blocks by empty ones (``anvil_reorg``): the chain keeps
        its height, and the transactions of the replaced blocks are gone."""
        self.rpc("anvil_reorg", depth, [])

    def drop_transaction(self, tx_hash: str) -> None:
        """Remove a transaction from the pool (``anvil_dropTransaction``)."""
        self.rpc("anvil_dropTransaction", tx_hash)

    def pool_size(self) -> int:
        """Transactions waiting in the pool (pending and queued)."""
        status = self.rpc("txpool_status")
        return int(status["pending"], 16) + int(status["queued"], 16)

    def transaction(self, tx_hash: str) -> dict[str, Any] | None:
        """``eth_getTransactionByHash`` (None when the node knows no such transaction)."""
        found = self.rpc("eth_getTransactionByHash", tx_hash)
        return None if found is None else dict(found)

    def stop(self, timeout_s: float = 5.0) -> None:
        """Terminate anvil's process group (SIGTERM, then SIGKILL after ``timeout_s``)."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout_s)
        else:  # the npm wrapper is gone: make sure nothing of its group is left
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
        self._log.close()

    def log_tail(self) -> str:
        """The end of anvil's stderr (for failure messages)."""
        self._log.seek(0)
        return self._log.read().decode(errors="replace").strip()[-500:]


def start_anvil(*extra_args: str, attempts: int = 3) -> AnvilNode:
    """Start anvil on a free loopback port and wait until it answers ``eth_chainId``.

    ``extra_args`` go to anvil (e.g. ``"--no-mining"``). Raises :class:`AnvilError` when
    ``node_modules`` lacks anvil (run ``make test`` or ``npm ci``) or it does not start.
    """
    if not ANVIL.exists():
        raise AnvilError(f"anvil is not installed ({ANVIL} is missing): run `make test`, or "
                         "`npm ci` in the repository root, to install the node tools")
    problem = "not started"
    for _ in range(attempts):
        port = _free_port()
        command = [str(ANVIL), "--host", "127.0.0.1", "--port", str(port), "--quiet",
                   "--chain-id", str(CHAIN_ID), "--mnemonic", MNEMONIC,
                   "--accounts", str(DEV_ACCOUNTS), *extra_args]
        log = tempfile.TemporaryFile()  # noqa: SIM115 - closed by AnvilNode.stop()
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL,
                                   stdout=subprocess.DEVNULL, stderr=log,
                                   start_new_session=True)
        node = AnvilNode(process, port, log)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline and process.poll() is None:
            try:
                if int(node.rpc("eth_chainId"), 16) == CHAIN_ID:
                    break
            except (OSError, AnvilError):
                time.sleep(0.02)
        if process.poll() is None and time.monotonic() < deadline:
            return node
        problem = node.log_tail() or f"no answer within {START_TIMEOUT_S:g} s"
        node.stop()
    raise AnvilError(f"anvil did not start: {problem}")


class RpcGate:
    """A loopback HTTP forwarder to ``upstream``. JSON-RPC requests for a method in
    :attr:`cut` (or any request while :attr:`down`) get their connection closed unanswered."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.cut: set[str] = set()
        self.down = False
        self.seen: list[str] = []
        gate = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                message = json.loads(body)
                methods = [m.get("method", "") for m in
                           (message if isinstance(message, list) else [message])]
                gate.seen.extend(methods)
                if gate.down or gate.cut.intersection(methods):
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                request = urllib.request.Request(gate.upstream, body,
                                                 {"Content-Type": "application/json"})
                with urllib.request.urlopen(request, timeout=10) as response:
                    answer = response.read()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                return None

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,),
                                        daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop serving and close the listening socket."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


def write_key_file(path: Path, private_key_hex: str) -> Path:
    """Write ``private_key_hex`` to a new file with mode 0600 and return its path."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(private_key_hex + "\n")
    return path


def closed_port_url() -> str:
    """A loopback URL on which nothing listens (connections are refused)."""
    return f"http://127.0.0.1:{_free_port()}"


__all__ = ["ANVIL", "AnvilError", "AnvilNode", "CHAIN_ID", "MNEMONIC", "RpcGate",
           "closed_port_url", "dev_keys", "rpc_call", "start_anvil", "write_key_file"]
