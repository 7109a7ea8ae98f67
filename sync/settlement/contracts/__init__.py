"""The settlement contract's Solidity source and its committed compiled artifact.

``EdgedSettlement.json`` is generated from ``EdgedSettlement.sol`` by
``python -m sync.settlement.contracts.compile`` (solc-js 0.8.28 from the repository's
``node_modules``); ``python -m sync.settlement.contracts.compile --check`` fails when the two
have drifted apart. Loading the artifact needs neither node nor solc.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

CONTRACT_NAME = "EdgedSettlement"
SOURCE_FILE = f"{CONTRACT_NAME}.sol"
ARTIFACT_FILE = f"{CONTRACT_NAME}.json"


class ArtifactError(RuntimeError):
    """The compiled artifact is missing or malformed."""


def load_artifact() -> dict[str, Any]:
    """The committed artifact: ``{"contract", "compiler", "evmVersion", "optimizer",
    "sourceSha256", "abi", "bytecode"}``; :class:`ArtifactError` when it is unusable."""
    resource = resources.files(__name__).joinpath(ARTIFACT_FILE)
    try:
        artifact = json.loads(resource.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ArtifactError(
            f"{ARTIFACT_FILE} is missing; "
            "run `python -m sync.settlement.contracts.compile`") from exc
    except ValueError as exc:
        raise ArtifactError(f"{ARTIFACT_FILE} is not valid JSON: {exc}") from exc
    if (not isinstance(artifact, dict) or artifact.get("contract") != CONTRACT_NAME
            or not isinstance(artifact.get("abi"), list)
            or not str(artifact.get("bytecode", "")).startswith("0x")):
        raise ArtifactError(f"{ARTIFACT_FILE} is not an {CONTRACT_NAME} artifact")
    return artifact
