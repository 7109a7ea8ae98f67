"""Audit a receipt's split: recompute it from the stored evidence and the data as it was.

What is recomputed, and what is taken from the evidence (the prompt and output are
never stored, so nothing that needs them can be redone):

- every method: the evidence's digest against the signed ``attr.evidence``; the
  manifest's digest against the receipt's (a changed manifest means the owner, data
  share and datanets as they were are unknown, so the audit stops there); the payees
  from the recomputed shares, the owner, operator and data share, against the signed
  ``payees``.
- ``owner/1``: the parameters (operator share, and where the data share went) and the
  payees, from the manifest and the node's operator settings.
- ``spans/1``: each datanet's state digest now against the one the receipt's
  parameters name (a changed datanet stops the audit: the data is not as it was); the
  parameters digest; N (original documents of non-removed contributors), the segment
  digests and the removed contributors, from the datanets. Per span, from the
  documents the evidence says hold it (looked up in the datanets' document tables):
  the occurrences per contributor, the distinct original documents, the holders under
  each datanet's ``first``/``split`` policy, the rarity and the credit; then the
  weights, the ppm and the evidence digest. Taken from the evidence: which documents
  hold each span and how often, and the span's offsets and length in words (finding
  spans needs the output text). For a span with more occurrences than were enumerated
  (``sampled``), its occurrence counts, document count and ``first`` holders are taken
  from the evidence too.
- ``influence/1`` and ``knn/1``: the bound examples' parameters digest (which pins the
  layer and the per-contributor vectors, or the knn examples) against the receipt's (a
  changed binding stops the audit); the ppm from the quantised scores; the evidence
  digest. Taken from the evidence: the scores and the predicted class (the input rows
  are only committed to, never stored).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from attribution import canonical
from attribution.commitments import digest
from attribution.influence import SCORE_SCALE, ppm_from_integer_weights
from attribution.payees import PPM, Payee
from attribution.receipt import SignedReceipt
from attribution.span_index import Segment
from attribution.spans import (
    SpanMatch,
    SpanSource,
    contributor_weights,
    rarity,
    span_credit,
    to_ppm,
    total_documents,
    wire_params,
)
from edged.attributor import OWNER_METHOD, RELAY_METHOD, Attributor
from edged.bindings import InfluenceBindings
from edged.datanets import DatanetNotFound, DatanetStore
from edged.errors import ModelNotFound
from edged.models import ModelStore


@dataclass
class AuditReport:
    """What an audit found: ``problems`` empty means the signed split is reproduced."""

    receipt: str
    seq: int
    model: str
    method: str
    problems: list[str] = field(default_factory=list)
    # Per-contributor reasoning: spans (lengths, rarity, holders) or influence scores.
    reasoning: dict[str, Any] = field(default_factory=dict)
    payees: list[list[str | int]] = field(default_factory=list)  # as recomputed
    recomputed: list[str] = field(default_factory=list)
    from_evidence: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_wire(self) -> dict[str, Any]:
        return {"receipt": self.receipt, "seq": self.seq, "model": self.model,
                "method": self.method, "ok": self.ok, "problems": self.problems,
                "reasoning": self.reasoning, "payees": self.payees,
                "recomputed": self.recomputed, "from_evidence": self.from_evidence}


@dataclass(frozen=True)
class NodeData:
    """What an audit reads: the node's models, datanets, bindings and attributor."""

    models: ModelStore
    datanets: DatanetStore
    bindings: InfluenceBindings
    attributor: Attributor


def audit_receipt(receipt: SignedReceipt, evidence_raw: bytes | None,
                  node: NodeData) -> AuditReport:
    """Recompute ``receipt``'s attribution and compare it with what was signed.

    Blocking (index and graph reads): call it from a thread."""
    attr = receipt.fields["attr"]
    report = AuditReport(receipt.leaf.hex(), receipt.seq, receipt.fields["model"]["name"],
                         attr["method"])
    if report.method == RELAY_METHOD:  # a model of a peer: no manifest here to check
        return _audit_relay(report, receipt, evidence_raw, node.attributor)
    try:
        manifest = node.models.get(report.model)
    except ModelNotFound:
        report.problems.append(f"model {report.model!r} is no longer installed here")
        return report
    if manifest.digest() != receipt.fields["model"]["manifest"]:
        report.problems.append(
            f"the manifest of {report.model!r} changed since this receipt (the receipt "
            f"names {receipt.fields['model']['manifest'].hex()}, it is "
            f"{manifest.digest().hex()} now): its owner, data share and datanets as they "
            "were are unknown")
        return report
    evidence: dict[str, Any] = canonical.decode(evidence_raw) if evidence_raw else {}
    if digest(evidence) != attr["evidence"]:
        report.problems.append("the stored evidence does not match the signed attr.evidence")
        return report
    report.recomputed.append("the evidence digest (attr.evidence)")
    if report.method == OWNER_METHOD:
        payees, params = _audit_owner(report, manifest, node.attributor)
    elif report.method == "spans/1":
        outcome = _audit_spans(report, evidence, manifest, node)
        if outcome is None:
            return report
        payees, params = outcome
    elif report.method in ("influence/1", "knn/1"):
        outcome = _audit_influence(report, evidence, manifest, node)
        if outcome is None:
            return report
        payees, params = outcome
    else:
        report.problems.append(f"unknown attribution method {report.method!r}")
        return report
    if params != attr["params"]:
        report.problems.append(f"attr.params differs: the receipt signs {attr['params'].hex()}, "
                               f"the recomputation gives {params.hex()}")
    report.payees = [payee.to_wire() for payee in payees]
    report.problems += _payee_differences(receipt.fields["payees"], report.payees)
    report.recomputed += ["attr.params", "the payees"]
    return report


def _audit_relay(report: AuditReport, receipt: SignedReceipt, evidence_raw: bytes | None,
                 attributor: Attributor) -> AuditReport:
    """A relay receipt: its evidence names the serving node and receipt, both attr digests
    are that evidence's, and the whole fee goes to this node's operator."""
    attr = receipt.fields["attr"]
    evidence = canonical.decode(evidence_raw) if evidence_raw else {}
    link_ok = isinstance(evidence, dict) and set(evidence) == {"node", "receipt"} and all(
        isinstance(value, str) and len(value) == 64 for value in evidence.values())
    if not link_ok:
        report.problems.append("the stored evidence does not name a serving node and receipt")
        return report
    for name in ("evidence", "params"):
        if attr[name] != digest(evidence):
            report.problems.append(f"attr.{name} is not the digest of the stored evidence")
    report.payees = [Payee(attributor.operator_id, "operator", PPM).to_wire()]
    report.problems += _payee_differences(receipt.fields["payees"], report.payees)
    report.reasoning = {"serving_node": evidence["node"], "serving_receipt": evidence["receipt"],
                        "why": "a request routed to a trusted peer: the peer's receipt pays "
                               "for the inference, this one the relay fee to the operator"}
    report.recomputed += ["the evidence digest (attr.evidence)", "attr.params", "the payees"]
    return report


def _audit_owner(report: AuditReport, manifest: Any,
                 attributor: Attributor) -> tuple[tuple[Payee, ...], bytes]:
    params = attributor.owner_only_params(manifest)
    report.reasoning = {"contributors": {}, "params": params,
                        "why": "no contributor is paid: the operator keeps its share, the "
                               f"data share ({manifest.data_share_ppm} ppm) goes to the "
                               f"{manifest.unmatched_data_to}, the owner keeps the rest"}
    return attributor.owner_only_payees(manifest), digest(params)


def _audit_spans(report: AuditReport, evidence: dict[str, Any], manifest: Any,
                 node: NodeData) -> tuple[tuple[Payee, ...], bytes] | None:
    try:
        sources, excluded = node.datanets.sources_for(manifest.datanets)
    except DatanetNotFound as exc:
        report.problems.append(f"a datanet of this receipt is gone: {exc.message}")
        return None
    signed = {source["name"]: source for source in evidence["params"].get("sources", [])}
    for source in sources:
        was = signed.get(source.name, {}).get("state")
        if was != source.state:
            report.problems.append(
                f"datanet {source.name!r} changed since this receipt: the receipt's "
                f"parameters name state {was}, its state now is {source.state}; the split "
                "cannot be recomputed on the data as it was")
    if report.problems:
        return None
    params = wire_params(node.attributor.span_params, sources)
    documents = total_documents(sources, excluded)
    _compare(report, "documents (N)", evidence["documents"], documents)
    _compare(report, "segments", evidence["segments"],
             [segment.info.digest for source in sources for segment in source.segments])
    _compare(report, "removed contributors", evidence["excluded"], sorted(excluded))
    locate = _document_table(sources)
    spans = [_recount(report, number, span, sources, locate)
             for number, span in enumerate(evidence["spans"], start=1)]
    weights = contributor_weights(spans, documents)
    _compare(report, "weights", evidence["weights"], weights)
    rebuilt = {**evidence, "params": params, "documents": documents,
               "excluded": sorted(excluded), "weights": weights,
               "segments": [segment.info.digest for source in sources
                            for segment in source.segments],
               "spans": [_span_wire(span, documents) for span in spans]}
    if digest(rebuilt) != digest(evidence):
        report.problems.append("the evidence rebuilt from the datanets differs from the "
                               "stored evidence")
    shares = to_ppm(weights)
    addresses = node.datanets.payout_addresses(manifest.datanets)
    report.reasoning = {
        "documents": documents,
        "spans": [_span_reasoning(number, span, documents)
                  for number, span in enumerate(spans, start=1)],
        "contributors": {name: {"weight": weights[name], "data_share_ppm": shares[name],
                                "payee": addresses.get(name, name)} for name in shares}}
    report.recomputed += ["each datanet's state digest", "N, segments, removed contributors",
                          "per span: occurrences per contributor, original documents, "
                          "holders, rarity, credit", "weights and shares"]
    report.from_evidence += ["which documents hold each span, and how often",
                             "each span's offsets and length in words"]
    if any(span.sampled for span in spans):
        report.from_evidence.append("sampled spans: occurrence counts, document counts and "
                                    "'first' holders")
    return node.attributor.split_payees(manifest, shares), digest(params)


def _document_table(sources: Sequence[SpanSource]
                    ) -> dict[str, tuple[int, int, Segment, int]]:
    """Document id -> (source number, segment number, segment, document index)."""
    table: dict[str, tuple[int, int, Segment, int]] = {}
    for tag, source in enumerate(sources):
        for order, segment in enumerate(source.segments):
            ids = segment.doc_ids_of(np.arange(segment.info.documents, dtype=np.int64))
            for index, doc_id in enumerate(ids):
                table[doc_id] = (tag, order, segment, index)
    return table


def _recount(report: AuditReport, number: int, span: dict[str, Any],
             sources: Sequence[SpanSource],
             locate: Mapping[str, tuple[int, int, Segment, int]]) -> SpanMatch:
    """One evidence span recounted from the documents it names (see the module doc)."""
    by_contributor: dict[str, int] = {}
    originals: set[str] = set()
    per_source: dict[int, list[tuple[int, Segment, int]]] = {}
    for doc_id, count in span["by_document"].items():
        if doc_id not in locate:
            report.problems.append(f"span {number}: document {doc_id!r} is not in the "
                                   "datanets")
            continue
        tag, order, segment, index = locate[doc_id]
        owner = segment.info.contributors[int(segment.doc_contributor[index])]
        by_contributor[owner] = by_contributor.get(owner, 0) + count
        if not segment.is_duplicate[index]:
            originals.add(doc_id)
        per_source.setdefault(tag, []).append((order, segment, index))
    holders: set[str] = set()
    sampled = bool(span["sampled"])
    for tag, documents in per_source.items():
        if sources[tag].duplicates == "split":
            for _, segment, index in documents:
                holders |= _credited(segment, index, "split")
        else:  # "first": the earliest document holding the span
            _, segment, index = min(documents, key=lambda item: (item[0], item[2]))
            holders |= _credited(segment, index, "first")
    if sampled:
        # Counts were scaled from an evenly spaced sample, and "first" looked at every
        # occurrence, which the sample in the evidence does not hold: taken as recorded.
        by_contributor = dict(span["by_contributor"])
        documents_count = int(span["documents"])
        if any(source.duplicates == "first" for source in sources):
            holders = set(span["holders"])
    else:
        documents_count = len(originals)
        _compare(report, f"span {number} occurrences per contributor",
                 span["by_contributor"], by_contributor)
        _compare(report, f"span {number} original documents", span["documents"],
                 documents_count)
    _compare(report, f"span {number} holders", span["holders"], sorted(holders))
    return SpanMatch(start=span["start"], end=span["end"], text_len=span["end"] - span["start"],
                     words=span["words"], count=sum(by_contributor.values()),
                     by_contributor={name: by_contributor[name] for name in sorted(by_contributor)},
                     by_document=dict(span["by_document"]), sampled=sampled,
                     documents=documents_count, holders=tuple(sorted(holders)))


def _credited(segment: Segment, index: int, policy: str) -> set[str]:
    """Who a document of ``segment`` credits: a near-duplicate credits the contributor it
    duplicates (and, under ``split``, its own contributor too); an original its own."""
    own = segment.info.contributors[int(segment.doc_contributor[index])]
    if not segment.is_duplicate[index]:
        return {own}
    copied = segment.duplicate_of[index]
    return {copied, own} if policy == "split" else {copied}


def _span_wire(span: SpanMatch, documents: int) -> dict[str, Any]:
    """A span as ``attribution.spans.attribute`` writes it into the evidence."""
    return {"start": span.start, "end": span.end, "words": span.words, "count": span.count,
            "documents": span.documents, "rarity": rarity(max(1, span.documents), documents),
            "sampled": int(span.sampled), "holders": list(span.holders),
            "by_contributor": dict(span.by_contributor), "by_document": dict(span.by_document)}


def _span_reasoning(number: int, span: SpanMatch, documents: int) -> dict[str, Any]:
    credit = span_credit(span, documents)
    return {"span": number, "words": span.words, "bytes": span.text_len,
            "documents": span.documents, "of_documents": documents,
            "rarity": rarity(max(1, span.documents), documents), "credit": credit,
            "holders": list(span.holders),
            "per_holder": credit // len(span.holders) if span.holders else 0}


def _audit_influence(report: AuditReport, evidence: dict[str, Any], manifest: Any,
                     node: NodeData) -> tuple[tuple[Payee, ...], bytes] | None:
    node.bindings.load(manifest, node.models.weights_path(manifest))
    binding = node.bindings.get(manifest.name)
    signed = digest(evidence.get("params", {}))
    if binding is None or binding.method != report.method:
        report.problems.append(f"no {report.method} binding of examples is on this node now; "
                               "the split cannot be recomputed on the examples as they were")
        return None
    if binding.digest() != signed:
        report.problems.append(
            f"the examples bound to {manifest.name!r} changed since this receipt: the "
            f"receipt's parameters are {signed.hex()}, the binding's now "
            f"{binding.digest().hex()}")
        return None
    scores = {name: int(score) for name, score in evidence["scores"].items()}
    shares = ppm_from_integer_weights(scores)
    _compare(report, "shares", evidence["weights"], shares)
    index = binding.influence if binding.influence is not None else binding.knn
    assert index is not None
    rebuilt = {**evidence, "params": index.params, "weights": shares}
    if digest(rebuilt) != digest(evidence):
        report.problems.append("the evidence rebuilt from the binding differs from the "
                               "stored evidence")
    report.reasoning = {
        "predicted_class": evidence["predicted_class"],
        "contributors": {name: {"score": score, "nats": f"{score / SCORE_SCALE:.6g}",
                                "data_share_ppm": shares.get(name, 0)}
                         for name, score in scores.items()}}
    report.recomputed += ["the binding's parameters digest", "shares from the scores"]
    report.from_evidence += ["each contributor's score, summed over the request's rows",
                             "the predicted class"]
    return node.attributor.split_payees(manifest, shares), binding.digest()


def _compare(report: AuditReport, what: str, signed: Any, recomputed: Any) -> None:
    if signed != recomputed:
        report.problems.append(f"{what} differ: the evidence has {signed!r}, the "
                               f"recomputation gives {recomputed!r}")


def _payee_differences(signed: Sequence[Sequence[Any]],
                       recomputed: Sequence[Sequence[Any]]) -> list[str]:
    """Each payee whose ppm differs, or who is on one side only."""
    before = {(str(p[0]), str(p[1])): int(p[2]) for p in signed}
    after = {(str(p[0]), str(p[1])): int(p[2]) for p in recomputed}
    return [f"payee {payee} ({role}): the receipt signs {before.get((payee, role), 0)} ppm, "
            f"the recomputation gives {after.get((payee, role), 0)} ppm"
            for payee, role in sorted(before.keys() | after.keys())
            if before.get((payee, role)) != after.get((payee, role))]

