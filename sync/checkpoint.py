"""Signed checkpoints: a node's commitment to the first ``size`` receipts of its log.

See DESIGN.md, "Checkpoints, batches, proofs". A checkpoint is
``(origin, size, root, ts)``: ``origin`` is the node's 32-byte Ed25519 public
key, ``root`` the RFC 6962 root of its first ``size`` receipt leaves (see
:mod:`sync.merkle`) and ``ts`` unix milliseconds. The node signs
``b"edged/checkpoint/v1\\0" + canonical(origin, size, root, ts)``. On the wire a
signed checkpoint is the canonical msgpack map of those four fields plus
``sig``; decoding is strict, so one checkpoint has exactly one byte form.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from nacl.exceptions import CryptoError
from nacl.signing import SigningKey, VerifyKey

from attribution import canonical
from sync.merkle import EMPTY_ROOT, ProofError, verify_consistency

SIGNATURE_DOMAIN = b"edged/checkpoint/v1\0"
_FIELDS = frozenset({"origin", "size", "root", "ts"})
_SIGNED_FIELDS = _FIELDS | {"sig"}
_UINT64_MAX = 2**64 - 1


class CheckpointError(ValueError):
    """Bytes or JSON that are not a well-formed signed checkpoint, or a bad signature."""


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= _UINT64_MAX


def _is_bytes(value: Any, length: int) -> bool:
    return isinstance(value, bytes) and len(value) == length


@dataclass(frozen=True)
class Checkpoint:
    """An unsigned checkpoint; fields are validated on construction."""

    origin: bytes  # the node's 32-byte Ed25519 public key
    size: int  # number of receipts covered
    root: bytes  # 32-byte RFC 6962 root of those receipts' leaves
    ts: int  # unix milliseconds

    def __post_init__(self) -> None:
        if not _is_bytes(self.origin, 32):
            raise CheckpointError("origin must be a 32-byte public key")
        if not _is_count(self.size):
            raise CheckpointError("size must be an integer in 0..2**64-1")
        if not _is_bytes(self.root, 32):
            raise CheckpointError("root must be 32 bytes")
        if not _is_count(self.ts):
            raise CheckpointError("ts must be unix milliseconds")
        if self.size == 0 and self.root != EMPTY_ROOT:
            raise CheckpointError("an empty log has the empty-tree root")

    def to_wire(self) -> dict[str, Any]:
        return {"origin": self.origin, "size": self.size, "root": self.root, "ts": self.ts}

    def canonical_bytes(self) -> bytes:
        """The canonical msgpack encoding of the four fields."""
        return canonical.encode(self.to_wire())

    def signing_bytes(self) -> bytes:
        """What the origin signs: the domain, then the canonical bytes."""
        return SIGNATURE_DOMAIN + self.canonical_bytes()

    def sign(self, key: SigningKey) -> SignedCheckpoint:
        """Sign with the origin's key (which must match ``origin``)."""
        if bytes(key.verify_key) != self.origin:
            raise CheckpointError("the signing key is not the checkpoint's origin")
        return SignedCheckpoint(self, key.sign(self.signing_bytes()).signature)


@dataclass(frozen=True)
class SignedCheckpoint:
    """A checkpoint with its origin's Ed25519 signature (not checked until :meth:`verify`)."""

    checkpoint: Checkpoint
    sig: bytes  # 64-byte Ed25519 signature

    def __post_init__(self) -> None:
        if not _is_bytes(self.sig, 64):
            raise CheckpointError("sig must be 64 bytes")

    def verify(self) -> None:
        """Raise :class:`CheckpointError` unless ``sig`` is the origin's signature."""
        try:
            VerifyKey(self.checkpoint.origin).verify(self.checkpoint.signing_bytes(), self.sig)
        except (CryptoError, ValueError):
            raise CheckpointError("bad checkpoint signature") from None

    def encode(self) -> bytes:
        """Canonical msgpack of origin, size, root, ts and sig."""
        return canonical.encode({**self.checkpoint.to_wire(), "sig": self.sig})

    @classmethod
    def decode(cls, data: bytes) -> SignedCheckpoint:
        """Strictly decode :meth:`encode`'s output; the signature is not checked here."""
        try:
            fields = canonical.decode(data)
        except canonical.CanonicalError as exc:
            raise CheckpointError(str(exc)) from None
        if not isinstance(fields, dict) or set(fields) != _SIGNED_FIELDS:
            raise CheckpointError("not a checkpoint: wrong set of fields")
        return cls(Checkpoint(fields["origin"], fields["size"], fields["root"], fields["ts"]),
                   fields["sig"])

    def to_json(self) -> dict[str, Any]:
        """JSON view for HTTP: bytes as lowercase hex."""
        cp = self.checkpoint
        return {"origin": cp.origin.hex(), "size": cp.size, "root": cp.root.hex(),
                "ts": cp.ts, "sig": self.sig.hex()}

    @classmethod
    def from_json(cls, value: Any) -> SignedCheckpoint:
        """Strict inverse of :meth:`to_json` (exact keys, lowercase hex)."""
        if not isinstance(value, dict) or set(value) != _SIGNED_FIELDS:
            raise CheckpointError("not a checkpoint: wrong set of fields")
        return cls(Checkpoint(_unhex(value["origin"]), value["size"], _unhex(value["root"]),
                              value["ts"]), _unhex(value["sig"]))


def _unhex(value: Any) -> bytes:
    if not isinstance(value, str) or value != value.lower():
        raise CheckpointError("hashes and keys are lowercase hex strings")
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise CheckpointError("not hex") from None


def consistent(
    a: Checkpoint | SignedCheckpoint, b: Checkpoint | SignedCheckpoint, proof: Sequence[bytes]
) -> bool:
    """Whether ``b`` extends ``a`` (same origin) according to the consistency ``proof``.

    ``a`` must be the smaller (or equal) checkpoint: a shrinking pair is not
    consistent. Equal sizes need equal roots and an empty proof. A checkpoint of
    the empty log (whose root is the empty-tree root) is a prefix of every
    checkpoint, with an empty proof. Signatures are NOT checked here: verify them
    first. Raises :class:`CheckpointError` if the origins differ.
    """
    first = a.checkpoint if isinstance(a, SignedCheckpoint) else a
    second = b.checkpoint if isinstance(b, SignedCheckpoint) else b
    if first.origin != second.origin:
        raise CheckpointError("checkpoints of different origins cannot be compared")
    if first.size == 0:
        return first.size <= second.size and not proof
    try:
        verify_consistency(first.size, second.size, first.root, second.root, proof)
    except ProofError:
        return False
    return True
