"""Self-contained proof bundles: one receipt, a signed checkpoint, and the inclusion proof
that ties them, checkable offline with nothing but the node's public key."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

from attribution.receipt import InvalidReceipt, SignedReceipt, leaf_hash, verify_receipt
from sync.checkpoint import CheckpointError, SignedCheckpoint
from sync.merkle import ProofError, verify_inclusion

BUNDLE_VERSION = 1


class BundleError(ValueError):
    """The bundle is malformed, or does not prove what it claims."""


@dataclass(frozen=True)
class ProofBundle:
    receipt: bytes  # canonical signed receipt bytes
    seq: int
    checkpoint: SignedCheckpoint
    proof: list[bytes]

    def to_json(self) -> dict[str, Any]:
        return {"version": BUNDLE_VERSION, "receipt": base64.b64encode(self.receipt).decode(),
                "seq": self.seq, "checkpoint": self.checkpoint.to_json(),
                "proof": [step.hex() for step in self.proof]}

    @classmethod
    def from_json(cls, value: Any) -> ProofBundle:
        try:
            if value["version"] != BUNDLE_VERSION:
                raise BundleError(f"unsupported bundle version {value['version']!r}")
            return cls(receipt=base64.b64decode(value["receipt"], validate=True),
                       seq=int(value["seq"]),
                       checkpoint=SignedCheckpoint.from_json(value["checkpoint"]),
                       proof=[bytes.fromhex(step) for step in value["proof"]])
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, BundleError):
                raise
            raise BundleError(f"malformed bundle: {exc.__class__.__name__}") from None


def verify_bundle(bundle: ProofBundle, node_key: bytes) -> SignedReceipt:
    """Check that ``node_key`` signed both the receipt and the checkpoint, and that the
    receipt is leaf ``seq`` of the tree the checkpoint commits to. Returns the receipt."""
    try:
        receipt = verify_receipt(bundle.receipt)
        bundle.checkpoint.verify()
    except (InvalidReceipt, CheckpointError) as exc:
        raise BundleError(str(exc)) from None
    checkpoint = bundle.checkpoint.checkpoint
    if receipt.node != node_key:
        raise BundleError("the receipt was not signed by this node key")
    if checkpoint.origin != node_key:
        raise BundleError("the checkpoint was not signed by this node key")
    if receipt.seq != bundle.seq:
        raise BundleError("the bundle's seq is not the receipt's")
    try:
        verify_inclusion(leaf_hash(bundle.receipt), bundle.seq, checkpoint.size, bundle.proof,
                         checkpoint.root)
    except ProofError as exc:
        raise BundleError(f"inclusion proof failed: {exc}") from None
    return receipt
