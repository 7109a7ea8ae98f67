"""Reading the chain and talking to its node: web3.py calls and their error mapping.

Every call to the node goes through :class:`RpcClient`, which turns transport failures into
:class:`ChainUnavailable` (naming the URL without credentials), an "insufficient funds"
answer into :class:`InsufficientFunds`, a refusal into :class:`TransactionFailed` with its
:class:`Refusal`, and a revert into :class:`TransactionFailed` with the contract's custom
error decoded by :class:`~sync.settlement.calls.ContractCalls`.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from typing import Any, cast
from urllib.parse import urlsplit, urlunsplit

from sync.settlement.calls import ContractCalls, decode_raw_call
from sync.settlement.errors import (
    REFUSAL_CODES,
    ChainUnavailable,
    InsufficientFunds,
    Refusal,
    SettlementError,
    TransactionFailed,
    classify_refusal,
)
from sync.settlement.fees import GWEI, Fees
from sync.settlement.txjournal import JournalError, TxJournal

try:
    import requests
    from eth_account.signers.local import LocalAccount
    from eth_typing import ChecksumAddress, HexStr
    from eth_utils import to_checksum_address
    from web3 import HTTPProvider, Web3
    from web3 import exceptions as w3err
    from web3.types import RPCEndpoint, TxParams
except ImportError:  # pragma: no cover - only without the `fleet` extra (see extra.py)
    pass

__all__ = ["RpcClient", "redact_url"]

_LONG_TOKEN = re.compile(r"^[A-Za-z0-9_\-]{16,}$")


def redact_url(url: str) -> str:
    """``url`` without user info, query, fragment or API-key-like path segments."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    netloc = host if port is None else f"{host}:{port}"
    path = "/".join("***" if _LONG_TOKEN.match(seg) else seg for seg in parts.path.split("/"))
    return urlunsplit((parts.scheme, netloc, path, "", ""))


def _rpc_message(exc: Exception) -> str:
    response = getattr(exc, "rpc_response", None)
    if isinstance(response, dict) and isinstance(response.get("error"), dict):
        return str(response["error"].get("message", ""))
    message = getattr(exc, "message", None)
    return str(message if message else exc)


def _rpc_code(exc: Exception) -> int | None:
    response = getattr(exc, "rpc_response", None)
    if isinstance(response, dict) and isinstance(response.get("error"), dict):
        code = response["error"].get("code")
        if isinstance(code, int) and not isinstance(code, bool):
            return code
    return None


class RpcClient:
    """web3.py over a plain HTTP provider (own ``requests`` session, no retries: the
    journal and :meth:`~sync.settlement.transactions.TxLifecycle.refresh` are the retry
    mechanism). ``calls`` decodes the contract's reverts; ``account`` is whose balance and
    nonces it reads and who signs."""

    def __init__(self, url: str, timeout_s: float, calls: ContractCalls,
                 account: LocalAccount) -> None:
        self.safe_url = redact_url(url)
        self._timeout_s = timeout_s
        self._account = account
        self._session = requests.Session()
        self.w3 = Web3(HTTPProvider(url, request_kwargs={"timeout": timeout_s},
                                    session=self._session, exception_retry_configuration=None))
        self.calls = calls
        self._chain_id: int | None = None
        self._software: str | None = None

    def close(self) -> None:
        """Close the HTTP session."""
        self._session.close()

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        try:
            yield
        except (requests.Timeout, w3err.RequestTimedOut, TimeoutError):
            raise ChainUnavailable(f"settlement chain RPC {self.safe_url} did not answer "
                                   f"within {self._timeout_s:g} s") from None
        except (requests.ConnectionError, w3err.ProviderConnectionError, ConnectionError):
            raise ChainUnavailable(
                f"settlement chain RPC {self.safe_url} is unreachable (connection failed)"
            ) from None
        except requests.HTTPError as exc:
            status = exc.response.status_code if exc.response is not None else "?"
            raise ChainUnavailable(
                f"settlement chain RPC {self.safe_url} answered HTTP {status}") from None

    # --- plain reads ----------------------------------------------------------------------

    def checksum(self, address: str) -> str:
        """The checksum form of an ``0x`` address; :class:`SettlementError` if malformed."""
        try:
            return str(to_checksum_address(address))
        except ValueError:
            raise SettlementError(f"{address!r} is not an address") from None

    def chain_id(self) -> int:
        """The node's chain id (asked once)."""
        if self._chain_id is None:
            with self._guard():
                self._chain_id = int(self.w3.eth.chain_id)
        return self._chain_id

    def bind_chain(self, journal: TxJournal) -> None:
        """Tie ``journal`` to this node's chain id; refuse a journal of another chain."""
        try:
            journal.bind("chain_id", str(self.chain_id()))
        except JournalError as exc:
            raise SettlementError(str(exc)) from None

    def head(self) -> int:
        """The latest block number."""
        with self._guard():
            return int(self.w3.eth.block_number)

    def balance(self) -> int:
        """The account's balance in wei."""
        with self._guard():
            return int(self.w3.eth.get_balance(self._account.address))

    def pending_nonce(self) -> int:
        """The account's transaction count including the node's pending pool."""
        with self._guard():
            return int(self.w3.eth.get_transaction_count(self._account.address, "pending"))

    def confirmed_nonce(self) -> int:
        """The account's transaction count at the head: the nonce the chain takes next."""
        with self._guard():
            return int(self.w3.eth.get_transaction_count(self._account.address, "latest"))

    def fee_market(self) -> tuple[int | None, int]:
        """``(base fee, suggested tip)`` at the head of an EIP-1559 chain, or ``(None, gas
        price)`` on a chain without a base fee; wei per gas."""
        with self._guard():
            base = self.w3.eth.get_block("latest").get("baseFeePerGas")
            if base is None:
                return None, int(self.w3.eth.gas_price)
            try:
                answer = self.w3.manager.request_blocking(
                    RPCEndpoint("eth_maxPriorityFeePerGas"), [])
                tip = answer if isinstance(answer, int) else int(cast(str, answer), 16)
            except w3err.Web3RPCError:  # not every node has it; 1 gwei is web3's own floor
                tip = GWEI
        return int(base), tip

    def software(self) -> str:
        """The node's software, lower case ("geth", "besu", "anvil", ...; "" when it does
        not say). Asked once it answers."""
        if self._software is None:
            try:
                with self._guard():
                    version = str(self.w3.client_version)
            except ChainUnavailable:
                return ""  # asked again next time
            except w3err.Web3Exception:
                version = ""
            self._software = version.split("/", 1)[0].strip().lower()
        return self._software

    def refusal(self, exc: Exception) -> Refusal:
        """Why the node refused, from its error answer ``exc`` (see :func:`classify_refusal`;
        the node's software is asked only for a code that some software defines)."""
        code = _rpc_code(exc)
        defined = any(code in codes for codes in REFUSAL_CODES.values())
        return classify_refusal(code, _rpc_message(exc), self.software() if defined else "")

    def receipt(self, tx_hash: str) -> dict[str, Any] | None:
        """The transaction's receipt, or None when the node has none."""
        with self._guard():
            try:
                found = self.w3.eth.get_transaction_receipt(cast(HexStr, tx_hash))
            except w3err.TransactionNotFound:
                return None
        if found is None or found.get("blockNumber") is None:
            return None
        return dict(found)

    def is_canonical(self, receipt: dict[str, Any]) -> bool:
        """Whether the receipt's block is still the canonical block at its height."""
        with self._guard():
            try:
                block = self.w3.eth.get_block(int(receipt["blockNumber"]))
            except w3err.BlockNotFound:
                return False
        return bytes(block["hash"]) == bytes(receipt["blockHash"])

    def view(self, address: str, function: str, *args: Any) -> Any:
        """Call a view function of the contract at ``address``."""
        bound = self.w3.eth.contract(address=cast(ChecksumAddress, self.checksum(address)),
                                     abi=self.calls.abi)
        with self._guard():
            try:
                return bound.functions[function](*args).call()
            except w3err.ContractLogicError as exc:
                raise self.calls.revert_error(f"{function} call", exc) from None

    # --- transactions ---------------------------------------------------------------------

    def _call_fields(self, to: str | None, data: bytes, value: int) -> TxParams:
        fields: dict[str, Any] = {"from": self._account.address, "data": data, "value": value}
        if to is not None:
            fields["to"] = to
        return cast(TxParams, fields)

    def estimate_gas(self, to: str | None, data: bytes, value: int, what: str) -> int:
        """Gas for the call; :class:`TransactionFailed` when it would revert."""
        with self._guard():
            try:
                return int(self.w3.eth.estimate_gas(self._call_fields(to, data, value)))
            except w3err.ContractLogicError as exc:
                raise self.calls.revert_error(what, exc) from None
            except w3err.Web3RPCError as exc:
                refusal = self.refusal(exc)
                if refusal is Refusal.INSUFFICIENT_FUNDS:
                    raise InsufficientFunds(self._account.address, value, self.balance(),
                                            at_least=True) from None
                raise TransactionFailed(f"{what}: the node refused it: {_rpc_message(exc)}",
                                        refusal=refusal) from None

    def sign(self, to: str | None, data: bytes, value: int, nonce: int, gas: int,
             fees: Fees) -> tuple[bytes, str]:
        """``(raw, tx hash)`` of the signed transaction."""
        tx: dict[str, Any] = {"chainId": self.chain_id(), "nonce": nonce, "gas": gas,
                              "value": value, "data": data, **fees.fields()}
        if fees.tip is not None:
            tx["type"] = 2
        if to is not None:
            tx["to"] = to
        signed = self._account.sign_transaction(tx)
        return bytes(signed.raw_transaction), "0x" + bytes(signed.hash).hex()

    def send_raw(self, raw: bytes) -> None:
        """Broadcast ``raw``; an "already known" answer counts as success. A refusal raises
        :class:`InsufficientFunds`, or :class:`TransactionFailed` with its ``refusal``."""
        with self._guard():
            try:
                self.w3.eth.send_raw_transaction(raw)
            except w3err.Web3RPCError as exc:
                refusal = self.refusal(exc)
                if refusal is Refusal.ALREADY_KNOWN:
                    return
                if refusal is Refusal.INSUFFICIENT_FUNDS:
                    raise InsufficientFunds(self._account.address, decode_raw_call(raw)[2],
                                            self.balance(), at_least=True) from None
                raise TransactionFailed(
                    f"the node refused the transaction: {_rpc_message(exc)}",
                    refusal=refusal) from None

    def revert_reason(self, tx_hash: str, raw: bytes, block: int) -> str:
        """Why a mined transaction reverted: its trace's output when the node traces,
        else a replay on the block's state, then its parent's; a best effort."""
        with self._guard():
            try:
                trace = self.w3.manager.request_blocking(
                    RPCEndpoint("debug_traceTransaction"), [tx_hash, {"tracer": "callTracer"}])
                output = trace.get("output") if hasattr(trace, "get") else None
                if isinstance(output, str) and len(output) >= 10:
                    return self.calls.decode_revert(bytes.fromhex(output[2:]))[2]
            except w3err.Web3RPCError:
                pass
            to, data, value = decode_raw_call(raw)
            for at in (block, block - 1):
                try:
                    self.w3.eth.call(self._call_fields(to, data, value),
                                     block_identifier=at)
                except w3err.ContractLogicError as exc:
                    return self.calls.revert_error("replay", exc).args[0].removeprefix(
                        "replay reverted: ")
                except w3err.Web3RPCError:
                    break
        return "reverted (reason unavailable)"
