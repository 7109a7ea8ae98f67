"""The settlement contract's calls as bytes: calldata from the ABI, signed transactions
decoded back to their call and pricing, revert data decoded to the contract's custom errors.

No network here: :class:`ContractCalls` works from the compiled artifact's ABI alone
(:mod:`sync.settlement.contracts`), and the raw-transaction decoders read the journal's
bytes (:mod:`sync.settlement.txjournal`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, cast

from sync.settlement.errors import TransactionFailed
from sync.settlement.fees import Fees

try:
    import eth_abi
    import rlp
    from eth_account.typed_transactions import TypedTransaction
    from eth_typing import HexAddress
    from eth_utils import keccak, to_checksum_address
    from hexbytes import HexBytes
    from web3 import Web3
    from web3.types import Nonce
    from web3.utils.address import get_create_address
except ImportError:  # pragma: no cover - only without the `fleet` extra (see extra.py)
    pass

__all__ = ["ContractCalls", "create_address", "decode_raw_call", "decode_raw_pricing"]

_ERROR_STRING = bytes.fromhex("08c379a0")  # Error(string)
_PANIC = bytes.fromhex("4e487b71")  # Panic(uint256)


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


class ContractCalls:
    """The contract's ABI: the calldata of its functions and the meaning of its reverts."""

    def __init__(self, abi: Sequence[dict[str, Any]]) -> None:
        self.abi = list(abi)
        self._contract = Web3().eth.contract(abi=self.abi)  # encoding only: no provider used
        self._errors = _error_table(self.abi)

    def encode(self, function: str, args: Sequence[Any]) -> bytes:
        """The calldata of ``function(*args)``."""
        return bytes.fromhex(self._contract.encode_abi(function, args=list(args))[2:])

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
