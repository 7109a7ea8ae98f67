"""Receipt drafts and chains for tests: real signing, deterministic contents."""

from __future__ import annotations

from nacl.signing import SigningKey

from attribution.payees import Payee, split_ppm
from attribution.receipt import ZERO_HASH, AttributionRef, ModelRef, ReceiptDraft, SignedReceipt
from edged.devtools.simulated_node import digest


def make_draft(i: int = 0, *, model_name: str = "tiny-model", kind: str = "chat",
               payees: tuple[Payee, ...] | None = None) -> ReceiptDraft:
    """A valid draft whose contents depend on ``i`` (so receipts differ)."""
    if payees is None:
        payees = split_ppm([("model-owner", "owner", 70), ("operator", "operator", 10),
                            (f"contributor-{i % 7}", "data", 20)])
    return ReceiptDraft(
        ts=1_700_000_000_000 + i,
        model=ModelRef(model_name, digest("weights"), digest("manifest")),
        kind=kind,
        input_commitment=digest(f"in-{i}"),
        output_commitment=digest(f"out-{i}"),
        input_units=i % 100,
        output_units=(7 * i) % 300,
        fee=10 * i,
        payees=payees,
        attr=AttributionRef("owner/1", digest("params"), digest(f"evidence-{i}")),
    )


def make_chain(key: SigningKey, n: int, *, start_seq: int = 0, prev: bytes = ZERO_HASH,
               model_name: str = "tiny-model") -> list[SignedReceipt]:
    """``n`` correctly chained receipts signed by ``key`` (another ``model_name`` gives
    another history under the same key)."""
    chain: list[SignedReceipt] = []
    for offset in range(n):
        receipt = make_draft(start_seq + offset, model_name=model_name).finalise(
            key, start_seq + offset, prev)
        chain.append(receipt)
        prev = receipt.leaf
    return chain


def key_from(label: str) -> SigningKey:
    """A deterministic node key (tests only)."""
    return SigningKey(digest(f"node-key-{label}"))
