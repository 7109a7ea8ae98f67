"""Manifest digests are pinned: receipts name a model by the digest of its manifest, so
no change to how manifests are declared or validated may change the digest of any
manifest, or the JSON a manifest is stored as. The values below were computed by the
hand-written manifest code that the Pydantic declaration replaced."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

from edged.manifest import Manifest, Price

BASE = dict(name="m", runtime="fake", weights="cd" * 32, size=3, owner="o", created=1)
MANIFESTS: dict[str, dict[str, Any]] = {
    "minimal": BASE,
    "llama, everything set": dict(
        name="tuned-model.v2", runtime="llama.cpp", weights="ab" * 32, size=123_456,
        owner="node:" + "0f" * 32, created=1_700_000_000,
        price=Price(request=5, input_per_1k=10, output_per_1k=20),
        chat_format="chatml", context_length=4096, datanets=("books", "ward-notes"),
        data_share_ppm=250_000, unmatched_data_to="operator",
        options={"parallel": 8, "n_gpu_layers": "auto", "flash_attn": True, "min_p": 0.1,
                 "tensor_split": [3, 1.5], "repeat_penalty": 1.1, "top_k": 40},
        lineage={"base": "ef" * 32, "card": "A card: what it is for.",
                 "trained_on": [{"datanet": "books", "state": "12" * 32},
                                {"datanet": "archive", "state": "34" * 32}]},
        federate=False),
    "llama, whole numbers as ints and floats": dict(
        BASE, runtime="llama.cpp", chat_format="none",
        options={"min_p": 0, "repeat_penalty": 1.0, "n_gpu_layers": -1, "use_mmap": False}),
    "onnx, tensors": dict(
        BASE, name="clf", runtime="onnx", price=Price(request=1, per_row=3),
        data_share_ppm=100_000, max_batch_size=64, batch_delay_us=500,
        inputs=({"name": "x", "datatype": "FP32", "shape": [-1, 4]},),
        outputs=({"name": "y", "datatype": "FP32", "shape": [-1, 3]},
                 {"name": "h", "datatype": None, "shape": None}),
        label_names=("cat", "dog", "émeu"), embedding_output="h", tokenizer="56" * 32,
        influence_layer={"features": "h", "weights": "W", "bias": "b", "source": "found"}),
    "lineage only": dict(BASE, lineage={"base": "ef" * 32}),
    "lineage naming another node's datanet": dict(
        BASE, lineage={"trained_on": [{"datanet": "their..net", "state": "78" * 32}]}),
}
# name: (manifest digest, sha256 of the stored JSON file)
PINNED = {
    "minimal": (
        "0f1fd38088d9ea2d54b52d30315d1ac529478562a7d00e4eaa9d4f0fe149cc83",
        "98968b23798cafa14bc7e70614a04a479c7a5665df4ef4d6a2235e974fae8583"),
    "llama, everything set": (
        "d651095faa098af1faf9c8d3d6e3b0b8bce7f8f55c48f17d8d105a06b254898c",
        "965bc0d833d0878fcb72150e39a44faa784049496d28de18ade2e20024231451"),
    "llama, whole numbers as ints and floats": (
        "8b272ba99cc3e8d417f2cc6d326ab1766cbdf0611f463fb5f1e55ce20c2a71ec",
        "676c7bb22755551bb07fcadf6ea87de5e5b5e6cc2f31d5e5f2e3b46ba630002c"),
    "onnx, tensors": (
        "6fe336209a90ace77ef5dcbe591adfe4492c01a915a4ab8c4899f79f53acce51",
        "3b3e0393cde73d796ca162889cbd8675d7efc46daf3936c63b236b866838c8d9"),
    "lineage only": (
        "0e1f2ac7be74be310513cec51e24fb7be7dc50f7b30c244ec8dc5776c95c7e4b",
        "49bee458962bd8a992d9647db6d5cd2a062ce12af1602a5c36b2812b7a7f6dd3"),
    "lineage naming another node's datanet": (
        "a24fd43b585787652db0e76d3e11b57768dfe874d8e8f263d334b3e7402cc6fa",
        "decaa74a099fb55b502e0e10bf55197c69038da9a8b173ac93ef8f500397a245"),
}


def stored(manifest: Manifest) -> str:
    """The manifest file's text, as ModelStore.add writes it."""
    return json.dumps(manifest.to_dict(), indent=2, sort_keys=True)


@pytest.mark.parametrize("name", list(MANIFESTS))
def test_manifest_digests_and_files_are_unchanged(name: str) -> None:
    manifest = Manifest(**MANIFESTS[name])
    text = stored(manifest)
    assert (manifest.digest().hex(), hashlib.sha256(text.encode()).hexdigest()) == PINNED[name]
    loaded = Manifest.from_dict(json.loads(text))
    assert loaded == manifest and loaded.digest() == manifest.digest()
    assert stored(loaded) == text
