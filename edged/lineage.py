"""A model's provenance as a request states it, made into a manifest's ``lineage``.

``edged models update NAME --base DIGEST --trained-on DATANET[@DIGEST] --card TEXT``
sends ``{"lineage": {"base", "trained_on": [{"datanet", "state"?}], "card"}}``. A
training datanet named without a state digest is pinned at the *current* state digest
of the node's datanet of that name (``edged.datanets.state_digest``: its segments,
duplicate policy and removed contributors), so the lineage says exactly which data the
model was trained on; a datanet this node does not hold must come with its digest.
The request's shape is declared by :class:`edged.manifest.LineageRequest` (checked before
this runs), and the result by :class:`edged.manifest.Lineage`, with the manifest.
"""

from __future__ import annotations

from typing import Any

from edged.datanets import DatanetNotFound, DatanetStore
from edged.errors import InvalidRequest
from edged.manifest import validate_digest


def resolve_lineage(value: Any, datanets: DatanetStore) -> dict[str, Any]:
    """``value`` (a request's ``lineage``; null or ``{}`` clears it) as a manifest holds
    it: digests as bare hex, each training datanet with a state digest. Blocking (it opens
    the datanets' segments): call it from a thread."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidRequest("'lineage' must be an object", param="lineage")
    lineage = dict(value)
    if isinstance(lineage.get("base"), str):
        lineage["base"] = _bare_digest(lineage["base"], "lineage.base")
    entries = lineage.get("trained_on")
    if isinstance(entries, list):
        lineage["trained_on"] = [_pinned(entry, f"lineage.trained_on[{number}]", datanets)
                                 for number, entry in enumerate(entries)]
    return lineage


def _pinned(entry: Any, param: str, datanets: DatanetStore) -> Any:
    """One training datanet with its state digest (the local datanet's current one when
    the entry gives none). Malformed entries pass through for the manifest check."""
    if not isinstance(entry, dict) or not isinstance(entry.get("datanet"), str):
        return entry
    state = entry.get("state")
    if isinstance(state, str):
        return {**entry, "state": _bare_digest(state, f"{param}.state")}
    if state is not None:
        return entry
    name = entry["datanet"]
    try:
        sources, _ = datanets.sources_for([name])
    except (DatanetNotFound, InvalidRequest):
        raise InvalidRequest(f"this node has no datanet {name!r}: give the state digest it "
                             f"was trained at ({name}@DIGEST)",
                             param=f"{param}.datanet") from None
    return {**entry, "state": sources[0].state}


def _bare_digest(value: str, param: str) -> str:
    try:
        return validate_digest(value)
    except InvalidRequest:
        raise InvalidRequest(f"{param} is sha256:<64 lowercase hex digits>",
                             param=param) from None
