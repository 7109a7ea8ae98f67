"""Which attribution method a receipt uses, and the payees it yields.

- ``owner/1``: models without datanets or bound examples (and embeddings, and
  tensor models whose examples could not be bound): the operator keeps
  ``operator_share_ppm``; the model's data share, if it has one, goes to whom
  ``unmatched_data_to`` names (the owner by default); the owner keeps the rest.
- ``spans/1``: models with datanets and a data share. The operator keeps its
  share; the data share (capped so the two never exceed the whole fee) is split
  among contributors by their span weights (each span split among its distinct
  holders under its datanet's ``first``/``split`` duplicate policy; the parameters
  digest names the policies and datanet state digests); the owner keeps the rest.
  When no span matches, the data share goes to whom the manifest's
  ``unmatched_data_to`` names (the owner by default). A contributor's payee id is
  its payout address when its datanet has one, else its name.
- ``influence/1`` (or ``knn/1``, only when the owner opted in to it): tensor models
  with bound examples, split by the binding's scores.

Integer arithmetic throughout: each part is weighted in units of 1e-12 of the
fee, then :func:`attribution.payees.split_ppm` rounds once to ppm.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from attribution import canonical
from attribution.commitments import digest
from attribution.influence import influence_weights
from attribution.payees import PPM, Payee, Role, split_ppm
from attribution.receipt import AttributionRef
from attribution.spans import METHOD as SPANS_METHOD
from attribution.spans import SpanParams, attribute
from edged.bindings import InfluenceBindings
from edged.datanets import DatanetStore
from edged.manifest import Manifest

OWNER_METHOD = "owner/1"
# A relay receipt (edged/federation.py): the routing node's operator gets the relay fee;
# params and evidence are both the digest of {"node", "receipt"} of the serving receipt.
RELAY_METHOD = "relay/1"


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
            return self.owner_only(manifest)
        sources, excluded = self.datanets.sources_for(manifest.datanets)
        result = attribute(output_text, sources, self.span_params, excluded)
        # attr.params digests the span parameters plus each datanet's duplicate policy and
        # state digest, so a receipt says which rule paid, on which data.
        ref = AttributionRef(SPANS_METHOD, result.params_digest(), result.evidence_digest())
        return Attribution(self.split_payees(manifest, result.weights_ppm), ref,
                           canonical.encode(result.evidence))

    def attribute_prediction(self, manifest: Manifest, bindings: InfluenceBindings,
                             inputs: Mapping[str, np.ndarray],
                             outputs: Mapping[str, np.ndarray]) -> Attribution:
        """``influence/1`` (or ``knn/1``, when the owner opted in) for a tensor model with
        bound examples: each row's scores on its predicted class, summed over the
        request's rows; ``owner/1`` when nothing is bound (no layer and no opt-in) or the
        manifest has no data share."""
        binding = bindings.get(manifest.name)
        if binding is None or not manifest.data_share_ppm:
            return self.owner_only(manifest)
        source = inputs if binding.features in inputs else outputs
        rows = np.asarray(source[binding.features], dtype=np.float64)
        totals: dict[str, float] = {}
        predicted = 0
        for number, row in enumerate(rows.reshape(rows.shape[0], -1)):
            scores, predicted = binding.scores(row, outputs, number)
            for contributor, score in scores.items():
                totals[contributor] = totals.get(contributor, 0.0) + score
        evidence = binding.evidence(totals, predicted)
        ref = AttributionRef(binding.method, binding.digest(), digest(evidence))
        return Attribution(self.split_payees(manifest, influence_weights(totals)), ref,
                           canonical.encode(evidence))

    def split_payees(self, manifest: Manifest,
                     shares: Mapping[str, int]) -> tuple[Payee, ...]:
        """Owner, operator and the data share split by ``shares`` (ppm of the data share)."""
        data_ppm = min(manifest.data_share_ppm, PPM - self.operator_ppm)
        owner_ppm = PPM - self.operator_ppm - data_ppm
        weights: list[tuple[str, Role, int]] = [
            (manifest.owner, "owner", owner_ppm * PPM),
            (self.operator_id, "operator", self.operator_ppm * PPM)]
        if shares:
            # A contributor with a payout address (`edged datanet add --payout`) is paid
            # under that address, so the fleet can settle it on chain as it is.
            addresses = self.datanets.payout_addresses(manifest.datanets)
            weights += [(addresses.get(contributor, contributor), "data", data_ppm * share)
                        for contributor, share in shares.items()]
        elif manifest.unmatched_data_to == "operator":
            weights.append((self.operator_id, "operator", data_ppm * PPM))
        else:
            weights.append((manifest.owner, "owner", data_ppm * PPM))
        return split_ppm(weights)

    def owner_only(self, manifest: Manifest) -> Attribution:
        """``owner/1``: no contributor is paid. The operator keeps its share; the model's
        data share (capped as in :meth:`split_payees`) goes to whom ``unmatched_data_to``
        names, the owner keeps the rest. The parameters are ``{"operator_ppm": n}``, plus
        ``unmatched_data_to_operator_ppm`` when the operator takes the data share (so
        receipts of models without one keep their digests)."""
        return Attribution(self.owner_only_payees(manifest), self.owner_only_ref(manifest),
                           None)

    def owner_only_payees(self, manifest: Manifest) -> tuple[Payee, ...]:
        to_operator = self._unmatched_to_operator_ppm(manifest)
        weights: list[tuple[str, Role, int]] = [
            (manifest.owner, "owner", PPM - self.operator_ppm - to_operator),
            (self.operator_id, "operator", self.operator_ppm + to_operator)]
        return split_ppm(weights)

    def owner_only_ref(self, manifest: Manifest) -> AttributionRef:
        return AttributionRef(OWNER_METHOD, digest(self.owner_only_params(manifest)),
                              digest({}))

    def owner_only_params(self, manifest: Manifest) -> dict[str, int]:
        params = {"operator_ppm": self.operator_ppm}
        if to_operator := self._unmatched_to_operator_ppm(manifest):
            params["unmatched_data_to_operator_ppm"] = to_operator
        return params

    def _unmatched_to_operator_ppm(self, manifest: Manifest) -> int:
        if manifest.unmatched_data_to != "operator":
            return 0
        return min(manifest.data_share_ppm, PPM - self.operator_ppm)
