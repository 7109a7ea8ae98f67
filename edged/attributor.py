"""Which attribution method a receipt uses, and the payees it yields.

- ``owner/1``: models without datanets (and embeddings): the operator keeps
  ``operator_share_ppm``, the model owner the rest.
- ``spans/1``: models with datanets and a data share. The operator keeps its
  share; the data share (capped so the two never exceed the whole fee) is split
  among contributors by their span weights; the owner keeps the rest. When no
  span matches, the data share goes to whom the manifest's
  ``unmatched_data_to`` names (the owner by default).

Integer arithmetic throughout: each part is weighted in units of 1e-12 of the
fee, then :func:`attribution.payees.split_ppm` rounds once to ppm.
"""

from __future__ import annotations

from dataclasses import dataclass

from attribution import canonical
from attribution.commitments import digest
from attribution.payees import PPM, Payee, Role, split_ppm
from attribution.receipt import AttributionRef
from attribution.spans import METHOD as SPANS_METHOD
from attribution.spans import SpanParams, attribute
from edged.datanets import DatanetStore
from edged.models import Manifest

OWNER_METHOD = "owner/1"


@dataclass(frozen=True)
class Attribution:
    payees: tuple[Payee, ...]
    ref: AttributionRef
    evidence: bytes | None  # canonical evidence kept on the node; None when there is none


class Attributor:
    def __init__(self, datanets: DatanetStore, *, operator_id: str, operator_ppm: int,
                 span_params: SpanParams) -> None:
        self.datanets = datanets
        self.operator_id = operator_id
        self.operator_ppm = operator_ppm
        self.span_params = span_params

    def check(self, manifest: Manifest) -> None:
        """Fail before any compute when a model names a datanet that is gone."""
        for name in manifest.datanets:
            self.datanets.get(name)

    def attribute(self, manifest: Manifest, output_text: str | None) -> Attribution:
        """Blocking (index queries): call it from a thread."""
        if output_text is None or not manifest.datanets or not manifest.data_share_ppm:
            return self._owner_only(manifest)
        segments, excluded = self.datanets.segments_for(manifest.datanets)
        result = attribute(output_text, segments, self.span_params, excluded)
        data_ppm = min(manifest.data_share_ppm, PPM - self.operator_ppm)
        owner_ppm = PPM - self.operator_ppm - data_ppm
        weights: list[tuple[str, Role, int]] = [
            (manifest.owner, "owner", owner_ppm * PPM),
            (self.operator_id, "operator", self.operator_ppm * PPM)]
        if result.weights_ppm:
            weights += [(contributor, "data", data_ppm * share)
                        for contributor, share in result.weights_ppm.items()]
        elif manifest.unmatched_data_to == "operator":
            weights.append((self.operator_id, "operator", data_ppm * PPM))
        else:
            weights.append((manifest.owner, "owner", data_ppm * PPM))
        ref = AttributionRef(SPANS_METHOD, self.span_params.digest(), result.evidence_digest())
        return Attribution(split_ppm(weights), ref, canonical.encode(result.evidence))

    def _owner_only(self, manifest: Manifest) -> Attribution:
        weights: list[tuple[str, Role, int]] = [
            (manifest.owner, "owner", PPM - self.operator_ppm),
            (self.operator_id, "operator", self.operator_ppm)]
        ref = AttributionRef(OWNER_METHOD, digest({"operator_ppm": self.operator_ppm}),
                             digest({}))
        return Attribution(split_ppm(weights), ref, None)
