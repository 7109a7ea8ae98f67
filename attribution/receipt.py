"""Receipt v1: the signed record of one inference.

See DESIGN.md, "Receipt v1". A receipt is built in two steps: the service
that served the inference makes a :class:`ReceiptDraft` (everything the
inference determines), and the ledger, inside the transaction that stores it,
turns the draft into a :class:`SignedReceipt` by assigning ``seq`` and
``prev`` and signing. The leaf hash of the signed bytes is the receipt id.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from attribution import canonical
from attribution.payees import PPM, ROLES, Payee

VERSION = 1
SIGNATURE_DOMAIN = b"edged/receipt/v1\0"
ZERO_HASH = bytes(32)
# "relay": a generation this node routed to a trusted peer (DESIGN.md, "Relay receipts").
KINDS = ("chat", "completion", "embedding", "predict", "relay")
_FIELDS = {
    "v", "node", "seq", "prev", "ts", "model", "kind", "in", "out",
    "usage", "fee", "payees", "attr", "sig",
}


class InvalidReceipt(ValueError):
    """The bytes are not a well-formed, correctly signed v1 receipt."""


def leaf_hash(signed_bytes: bytes) -> bytes:
    """RFC 6962 leaf hash of a signed receipt: its id and its Merkle leaf."""
    return hashlib.sha256(b"\x00" + signed_bytes).digest()


@dataclass(frozen=True)
class ModelRef:
    name: str
    weights: bytes  # sha256 of the weights file
    manifest: bytes  # sha256 of the canonical manifest
    adapter: bytes | None = None

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {
            "name": self.name, "weights": self.weights, "manifest": self.manifest,
        }
        if self.adapter is not None:
            wire["adapter"] = self.adapter
        return wire


@dataclass(frozen=True)
class AttributionRef:
    method: str  # "owner/1", "spans/1", ...
    params: bytes  # digest of the method's parameters
    evidence: bytes  # digest of the evidence kept on the node

    def to_wire(self) -> dict[str, Any]:
        return {"method": self.method, "params": self.params, "evidence": self.evidence}


@dataclass(frozen=True)
class ReceiptDraft:
    """A receipt before the ledger gives it its place in the chain."""

    ts: int
    model: ModelRef
    kind: str
    input_commitment: bytes
    output_commitment: bytes
    input_units: int
    output_units: int
    fee: int
    payees: tuple[Payee, ...]
    attr: AttributionRef

    def finalise(self, key: SigningKey, seq: int, prev: bytes) -> SignedReceipt:
        """Assign the chain position and sign."""
        fields: dict[str, Any] = {
            "v": VERSION,
            "node": bytes(key.verify_key),
            "seq": seq,
            "prev": prev,
            "ts": self.ts,
            "model": self.model.to_wire(),
            "kind": self.kind,
            "in": self.input_commitment,
            "out": self.output_commitment,
            "usage": {"in": self.input_units, "out": self.output_units},
            "fee": self.fee,
            "payees": [payee.to_wire() for payee in self.payees],
            "attr": self.attr.to_wire(),
        }
        _check_fields(fields)
        signature = key.sign(SIGNATURE_DOMAIN + canonical.encode(fields)).signature
        raw = canonical.encode({**fields, "sig": signature})
        return SignedReceipt(raw=raw, fields={**fields, "sig": signature})


@dataclass(frozen=True)
class SignedReceipt:
    raw: bytes  # canonical signed bytes
    fields: dict[str, Any]

    @property
    def leaf(self) -> bytes:
        return leaf_hash(self.raw)

    @property
    def seq(self) -> int:
        seq: int = self.fields["seq"]
        return seq

    @property
    def prev(self) -> bytes:
        prev: bytes = self.fields["prev"]
        return prev

    @property
    def node(self) -> bytes:
        node: bytes = self.fields["node"]
        return node

    def to_json(self) -> dict[str, Any]:
        """A JSON view: bytes as lowercase hex."""
        return {"id": self.leaf.hex(), **_hexify(self.fields)}


def verify_receipt(raw: bytes) -> SignedReceipt:
    """Check encoding, fields and signature; return the receipt or raise InvalidReceipt."""
    try:
        fields = canonical.decode(raw)
    except canonical.CanonicalError as exc:
        raise InvalidReceipt(str(exc)) from None
    if not isinstance(fields, dict) or set(fields) != _FIELDS:
        raise InvalidReceipt("not a v1 receipt: wrong set of fields")
    signature = fields.pop("sig")
    _check_fields(fields)
    if not isinstance(signature, bytes) or len(signature) != 64:
        raise InvalidReceipt("sig must be 64 bytes")
    try:
        VerifyKey(fields["node"]).verify(SIGNATURE_DOMAIN + canonical.encode(fields), signature)
    except BadSignatureError:
        raise InvalidReceipt("bad signature") from None
    return SignedReceipt(raw=raw, fields={**fields, "sig": signature})


def _check_fields(fields: dict[str, Any]) -> None:
    def require(condition: bool, message: str) -> None:
        if not condition:
            raise InvalidReceipt(message)

    def is_hash(value: Any) -> bool:
        return isinstance(value, bytes) and len(value) == 32

    def is_count(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value >= 0

    require(fields.get("v") == VERSION, "v must be 1")
    require(is_hash(fields.get("node")), "node must be a 32-byte key")
    require(is_count(fields.get("seq")), "seq must be a non-negative integer")
    require(is_hash(fields.get("prev")), "prev must be 32 bytes")
    require(is_count(fields.get("ts")), "ts must be unix milliseconds")
    require(fields.get("kind") in KINDS, "unknown kind")
    require(is_hash(fields.get("in")) and is_hash(fields.get("out")), "in/out must be 32 bytes")
    require(is_count(fields.get("fee")), "fee must be a non-negative integer")
    model: Any = fields.get("model")
    require(isinstance(model, dict) and set(model) <= {"name", "weights", "manifest", "adapter"}
            and {"name", "weights", "manifest"} <= set(model), "bad model")
    require(isinstance(model["name"], str) and is_hash(model["weights"])
            and is_hash(model["manifest"]) and is_hash(model.get("adapter", ZERO_HASH)),
            "bad model")
    usage: Any = fields.get("usage")
    require(isinstance(usage, dict) and set(usage) == {"in", "out"}
            and is_count(usage["in"]) and is_count(usage["out"]), "bad usage")
    attr: Any = fields.get("attr")
    require(isinstance(attr, dict) and set(attr) == {"method", "params", "evidence"}
            and isinstance(attr["method"], str) and is_hash(attr["params"])
            and is_hash(attr["evidence"]), "bad attr")
    payees: Any = fields.get("payees")
    require(isinstance(payees, list) and len(payees) > 0, "payees must be a non-empty list")
    for payee in payees:
        require(isinstance(payee, list) and len(payee) == 3 and isinstance(payee[0], str)
                and payee[1] in ROLES and is_count(payee[2]), "bad payee")
    require(sum(payee[2] for payee in payees) == PPM, "payee shares must sum to 1000000")
    require(fields["seq"] > 0 or fields["prev"] == ZERO_HASH, "seq 0 must have a zero prev")


def _hexify(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {key: _hexify(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_hexify(item) for item in value]
    return value
