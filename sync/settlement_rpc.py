"""JSON-RPC plumbing of :mod:`sync.settlement`: web3.py calls, error mapping, revert decoding.

Every call to the node goes through :class:`RpcClient`, which turns transport failures into
:class:`ChainUnavailable` (naming the URL without credentials), an "insufficient funds"
answer into :class:`InsufficientFunds` and a revert into :class:`TransactionFailed` with the
contract's custom error decoded from the artifact's ABI.

A node that refuses a transaction says why in its JSON-RPC error; :func:`classify_refusal`
reads the error code where the node's software gives these refusals codes of their own, and
the message only where it does not (:class:`Refusal`).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, cast
from urllib.parse import urlsplit, urlunsplit

from sync.txjournal import JournalError, TxJournal

_MISSING: str | None = None
try:
    import eth_abi
    import requests
    import rlp
    from eth_account.signers.local import LocalAccount
    from eth_account.typed_transactions import TypedTransaction
    from eth_typing import ChecksumAddress, HexAddress, HexStr
    from eth_utils import keccak, to_checksum_address
    from hexbytes import HexBytes
    from web3 import HTTPProvider, Web3
    from web3 import exceptions as w3err
    from web3.types import Nonce, RPCEndpoint, TxParams
    from web3.utils.address import get_create_address
except ImportError as exc:  # pragma: no cover - only without the `fleet` extra
    _MISSING = exc.name or str(exc)

_GWEI = 10**9
_ERROR_STRING = bytes.fromhex("08c379a0")  # Error(string)
_PANIC = bytes.fromhex("4e487b71")  # Panic(uint256)
_LONG_TOKEN = re.compile(r"^[A-Za-z0-9_\-]{16,}$")


class SettlementError(Exception):
    """Base class of the settlement adapter's errors."""


class ChainUnavailable(SettlementError):
    """The settlement chain's RPC endpoint cannot be reached (refused, reset, timed out)."""


class InsufficientFunds(SettlementError):
    """The account cannot pay for a transaction's value and gas."""

    def __init__(self, address: str, needed: int, balance: int, *,
                 at_least: bool = False) -> None:
        bound = "at least" if at_least else "up to"
        super().__init__(f"account {address} has {balance} wei but the transaction needs "
                         f"{bound} {needed} wei (value plus gas limit times fee); fund it")
        self.address = address
        self.needed = needed
        self.balance = balance


class FeeLimitReached(SettlementError):
    """The chain asks more per gas than the configured maximum fee; nothing was signed."""


class Refusal(StrEnum):
    """Why a node refused a transaction, as far as its answer tells."""

    ALREADY_KNOWN = "already known"  # the pool holds these very bytes: as good as accepted
    NONCE_TOO_LOW = "nonce too low"  # the nonce is spent, by this or another transaction
    REPLACEMENT_UNDERPRICED = "replacement underpriced"  # a same-nonce one pays about as much
    INSUFFICIENT_FUNDS = "insufficient funds"
    FEE_TOO_LOW = "fee too low"  # below the block's base fee or the pool's minimum price
    OTHER = "other"


# Error codes that name a refusal, by node software (the first word of web3_clientVersion,
# lower case). Most nodes give none: geth answers -32000, anvil -32003 (EIP-1474's
# "transaction rejected") and Nethermind -32010 whatever the reason, and the same numbers
# mean other things elsewhere (-32001 is EIP-1474's "resource not found", -32004 its "method
# not supported"), so a code counts only for the software that defines it.
_REFUSAL_CODES: dict[str, dict[int, Refusal]] = {
    "besu": {-32001: Refusal.NONCE_TOO_LOW, -32004: Refusal.INSUFFICIENT_FUNDS,
             -32009: Refusal.FEE_TOO_LOW},
}
# Where no code tells, the message does (lower case, looked for in this order).
_REFUSAL_MESSAGES: tuple[tuple[Refusal, tuple[str, ...]], ...] = (
    (Refusal.ALREADY_KNOWN, ("already known", "known transaction", "already imported",
                             "alreadyknown")),
    (Refusal.NONCE_TOO_LOW, ("nonce too low", "oldnonce")),
    (Refusal.REPLACEMENT_UNDERPRICED, ("replacement transaction underpriced",
                                       "replacement fee too low",
                                       "insufficient gas price to replace")),
    (Refusal.INSUFFICIENT_FUNDS, ("insufficient funds", "upfront cost exceeds",
                                  "insufficientfunds")),
    (Refusal.FEE_TOO_LOW, ("less than block base fee", "below current base fee",
                           "transaction underpriced", "gas price below", "feetoolow")),
)


def classify_refusal(code: int | None, message: str, software: str) -> Refusal:
    """What a node's error answer to a transaction means: by its JSON-RPC ``code`` where the
    node's ``software`` gives that refusal a code of its own, else by its ``message``."""
    by_code = _REFUSAL_CODES.get(software, {}).get(code) if code is not None else None
    if by_code is not None:
        return by_code
    lowered = message.lower()
    for refusal, phrases in _REFUSAL_MESSAGES:
        if any(phrase in lowered for phrase in phrases):
            return refusal
    return Refusal.OTHER


class TransactionFailed(SettlementError):
    """A transaction reverted (or would), or the node refused it for good.

    ``error_name`` is the contract's custom error (``"AlreadyClaimed"``, ``"InvalidProof"``,
    ``"NotOperator"``, ...) when the revert data could be decoded; ``refusal`` says why the
    node refused it when it did.
    """

    def __init__(self, message: str, *, error_name: str | None = None,
                 error_args: tuple[Any, ...] = (), tx_hash: str | None = None,
                 refusal: Refusal | None = None) -> None:
        super().__init__(message)
        self.error_name = error_name
        self.error_args = error_args
        self.tx_hash = tx_hash
        self.refusal = refusal


@dataclass(frozen=True)
class Fees:
    """What a transaction offers per gas, in wei: an EIP-1559 fee cap (``maxFeePerGas``) and
    tip (``maxPriorityFeePerGas``), or a legacy gas price (``max_fee``, with ``tip`` None)."""

    max_fee: int
    tip: int | None = None

    def fields(self) -> dict[str, int]:
        """The transaction fields."""
        if self.tip is None:
            return {"gasPrice": self.max_fee}
        return {"maxFeePerGas": self.max_fee, "maxPriorityFeePerGas": self.tip}


def missing_extra() -> str | None:
    """The name of the missing module when the ``fleet`` extra is not installed, else None."""
    return _MISSING


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


def decode_raw_call(raw: bytes) -> tuple[str | None, bytes, int]:
    """``(to, data, value)`` of a signed raw transaction (typed or legacy)."""
    if raw and raw[0] <= 0x7F:
        fields = TypedTransaction.from_bytes(HexBytes(raw)).as_dict()
        to, data, value = bytes(fields["to"]), bytes(fields["data"]), int(fields["value"])
    else:
        items = rlp.decode(raw)
        to, value, data = bytes(items[3]), int.from_bytes(items[4], "big"), bytes(items[5])
    return (to_checksum_address(to) if to else None), data, value


def decode_raw_pricing(raw: bytes) -> tuple[int, Fees]:
    """``(gas limit, fees)`` of a signed raw transaction (typed or legacy)."""
    if raw and raw[0] <= 0x7F:
        fields = TypedTransaction.from_bytes(HexBytes(raw)).as_dict()
        if "maxFeePerGas" in fields:
            return int(fields["gas"]), Fees(int(fields["maxFeePerGas"]),
                                            int(fields["maxPriorityFeePerGas"]))
        return int(fields["gas"]), Fees(int(fields["gasPrice"]))
    items = rlp.decode(raw)
    return int.from_bytes(items[2], "big"), Fees(int.from_bytes(items[1], "big"))


def create_address(sender: str, nonce: int) -> str:
    """The address of the contract that ``sender`` creates with transaction ``nonce``."""
    return str(get_create_address(cast(HexAddress, sender), cast(Nonce, nonce)))


def _error_table(abi: Sequence[dict[str, Any]]) -> dict[bytes, tuple[str, list[str], list[str]]]:
    table = {_ERROR_STRING: ("Error", ["string"], ["message"]),
             _PANIC: ("Panic", ["uint256"], ["code"])}
    for item in abi:
        if item.get("type") == "error":
            types = [str(arg["type"]) for arg in item.get("inputs", [])]
            names = [str(arg.get("name") or f"arg{i}") for i, arg in
                     enumerate(item.get("inputs", []))]
            selector = keccak(text=f"{item['name']}({','.join(types)})")[:4]
            table[selector] = (str(item["name"]), types, names)
    return table


def _show(value: Any) -> str:
    if isinstance(value, bytes | bytearray):
        return "0x" + bytes(value).hex()
    return str(value)


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
    journal and :meth:`SettlementAdapter.refresh` are the retry mechanism)."""

    def __init__(self, url: str, timeout_s: float, abi: Sequence[dict[str, Any]],
                 account: LocalAccount) -> None:
        self.safe_url = redact_url(url)
        self._timeout_s = timeout_s
        self._account = account
        self._session = requests.Session()
        self.w3 = Web3(HTTPProvider(url, request_kwargs={"timeout": timeout_s},
                                    session=self._session, exception_retry_configuration=None))
        self._contract = self.w3.eth.contract(abi=abi)
        self._errors = _error_table(abi)
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
                tip = _GWEI
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
        defined = any(code in codes for codes in _REFUSAL_CODES.values())
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
                                     abi=self._contract.abi)
        with self._guard():
            try:
                return bound.functions[function](*args).call()
            except w3err.ContractLogicError as exc:
                raise self.revert_error(f"{function} call", exc) from None

    # --- transactions ---------------------------------------------------------------------

    def encode(self, function: str, args: Sequence[Any]) -> bytes:
        """The calldata of ``function(*args)``."""
        return bytes.fromhex(self._contract.encode_abi(function, args=list(args))[2:])

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
                raise self.revert_error(what, exc) from None
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

    # --- reverts --------------------------------------------------------------------------

    def decode_revert(self, data: bytes) -> tuple[str | None, tuple[Any, ...], str]:
        """``(error name, args, text)`` of revert data, e.g. ``AlreadyClaimed(epoch=1, ...)``."""
        known = self._errors.get(bytes(data[:4]))
        if known is None:
            return None, (), ("reverted without data" if not data else
                              f"reverted with unknown data 0x{bytes(data).hex()}")
        name, types, names = known
        try:
            args = tuple(to_checksum_address(value) if kind == "address" else value
                         for kind, value in zip(types, eth_abi.decode(types, bytes(data[4:])),
                                                strict=True))
        except Exception:  # malformed arguments: the name is still right
            return name, (), name
        shown = ", ".join(f"{n}={_show(v)}" for n, v in zip(names, args, strict=True))
        return name, args, f"{name}({shown})"

    def revert_error(self, what: str, exc: Exception, tx_hash: str | None = None
                     ) -> TransactionFailed:
        """A :class:`TransactionFailed` for a web3 ``ContractLogicError``."""
        data = getattr(exc, "data", None)
        if isinstance(data, dict):
            data = data.get("data")
        if isinstance(data, str) and data.startswith("0x"):
            name, args, text = self.decode_revert(bytes.fromhex(data[2:]))
        else:
            name, args, text = None, (), str(getattr(exc, "message", None) or "reverted")
        return TransactionFailed(f"{what} reverted: {text}", error_name=name, error_args=args,
                                 tx_hash=tx_hash)

    def failure(self, what: str, error: str | None, tx_hash: str) -> TransactionFailed:
        """A :class:`TransactionFailed` for a journaled transaction that failed."""
        text = error or "reverted"
        match = re.match(r"^([A-Za-z_][A-Za-z0-9_]*)(\(|$)", text)
        name = match.group(1) if match and match.group(1) != "reverted" else None
        return TransactionFailed(f"{what}: transaction {tx_hash} failed: {text}",
                                 error_name=name, tx_hash=tx_hash)

    def revert_reason(self, tx_hash: str, raw: bytes, block: int) -> str:
        """Why a mined transaction reverted: its trace's output when the node traces,
        else a replay on the block's state, then its parent's; a best effort."""
        with self._guard():
            try:
                trace = self.w3.manager.request_blocking(
                    RPCEndpoint("debug_traceTransaction"), [tx_hash, {"tracer": "callTracer"}])
                output = trace.get("output") if hasattr(trace, "get") else None
                if isinstance(output, str) and len(output) >= 10:
                    return self.decode_revert(bytes.fromhex(output[2:]))[2]
            except w3err.Web3RPCError:
                pass
            to, data, value = decode_raw_call(raw)
            for at in (block, block - 1):
                try:
                    self.w3.eth.call(self._call_fields(to, data, value),
                                     block_identifier=at)
                except w3err.ContractLogicError as exc:
                    return self.revert_error("replay", exc).args[0].removeprefix(
                        "replay reverted: ")
                except w3err.Web3RPCError:
                    break
        return "reverted (reason unavailable)"
