from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import struct
from dataclasses import replace
from pathlib import Path

import pytest

from edged.devtools.tiny_gguf import write_tiny_llama_gguf
from edged.errors import Conflict, InvalidRequest, ModelNotFound
from edged.manifest import Manifest, Price, validate_digest, validate_name
from edged.models import ModelStore


@pytest.fixture(scope="module")
def gguf_bytes(tiny_model_file: Path) -> bytes:
    return tiny_model_file.read_bytes()


def _upload(store: ModelStore, data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()
    with store.blob_writer(digest) as handle:
        handle.write(data)
    return digest


def _manifest(name: str, digest: str, **overrides: object) -> Manifest:
    fields: dict[str, object] = {"name": name, "runtime": "llama.cpp", "weights": digest,
                                 "size": 0, "owner": "alice", "chat_format": "none"}
    return Manifest(**{**fields, **overrides})  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["../evil", "a/b", "", "UPPER", "x" * 65, "a..b", ".hidden",
                                  "trailing-", "sp ace", "nul\x00", "name\n", "a\n"])
def test_bad_names_are_refused(name: str) -> None:
    with pytest.raises(InvalidRequest):
        validate_name(name)


@pytest.mark.parametrize("digest", ["", "sha256:" + "g" * 64, "a" * 63, "../" + "a" * 61,
                                    "sha512:" + "a" * 64])
def test_bad_digests_are_refused(digest: str) -> None:
    with pytest.raises(InvalidRequest):
        validate_digest(digest)


def test_add_get_list_remove(tmp_path: Path, gguf_bytes: bytes) -> None:
    store = ModelStore(tmp_path)
    digest = _upload(store, gguf_bytes)
    added = store.add(_manifest("tiny", digest, price=Price(request=5)))
    assert added.size == len(gguf_bytes) and added.created > 0
    assert store.get("tiny") == added
    assert [m.name for m in store.list()] == ["tiny"]
    with pytest.raises(Conflict):
        store.add(_manifest("tiny", digest))
    store.remove("tiny")
    with pytest.raises(ModelNotFound):
        store.get("tiny")
    assert not store.has_blob(digest)


def test_shared_blob_survives_removal_of_one_model(tmp_path: Path, gguf_bytes: bytes) -> None:
    store = ModelStore(tmp_path)
    digest = _upload(store, gguf_bytes)
    store.add(_manifest("one", digest))
    store.add(_manifest("two", digest))
    store.remove("one")
    assert store.has_blob(digest)


def test_blob_with_wrong_digest_is_discarded(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    wrong = hashlib.sha256(b"something else").hexdigest()
    with pytest.raises(InvalidRequest), store.blob_writer(wrong) as handle:
        handle.write(b"GGUF" + b"\x00" * 60)
    assert not store.has_blob(wrong)
    assert list(store.blobs_dir.iterdir()) == []


def _corrupt_ggufs(good: bytes) -> dict[str, bytes]:
    header = struct.Struct("<4sIQQ")
    return {
        "not a gguf": b"not a gguf file",
        "magic then garbage": b"GGUF" + bytes(range(256)) * 4,
        "magic then zeros": b"GGUF" + b"\x00" * 60,
        "truncated": good[: len(good) // 2],
        "header only": good[:24],
        "absurd tensor count": header.pack(b"GGUF", 3, 2**60, 0) + good[24:],
        "absurd metadata count": header.pack(b"GGUF", 3, 21, 2**40) + good[24:],
        "unknown version": header.pack(b"GGUF", 99, 21, 22) + good[24:],
    }


@pytest.mark.parametrize("case", list(_corrupt_ggufs(b"")))
def test_llama_models_must_be_well_formed_gguf(tmp_path: Path, gguf_bytes: bytes,
                                               case: str) -> None:
    store = ModelStore(tmp_path)
    digest = _upload(store, _corrupt_ggufs(gguf_bytes)[case])
    with pytest.raises(InvalidRequest) as refused:
        store.add(_manifest("bad", digest))
    assert refused.value.param == "weights"
    assert store.list() == []


def test_symlinked_manifest_is_not_followed(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "store")
    outside = tmp_path / "outside.json"
    outside.write_text("{}")
    os.symlink(outside, store.manifests_dir / "escape.json")
    with pytest.raises(ModelNotFound):
        store.get("escape")


def test_unknown_model_is_model_not_found(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFound):
        ModelStore(tmp_path).get("nothing-here")


def test_fee_rounds_per_token_parts_up() -> None:
    price = Price(request=100, input_per_1k=10, output_per_1k=50)
    assert price.fee(0, 0) == 100
    assert price.fee(1, 1) == 100 + 1 + 1
    assert price.fee(1000, 2000) == 100 + 10 + 100


def test_manifest_digest_changes_with_content(tmp_path: Path) -> None:
    digest = "a" * 64
    assert _manifest("m", digest).digest() != _manifest("m", digest, owner="bob").digest()
    assert _manifest("m", digest).digest() == _manifest("m", digest).digest()


def test_a_gguf_needs_a_chat_template_or_format(tmp_path: Path, gguf_bytes: bytes) -> None:
    store = ModelStore(tmp_path)
    digest = _upload(store, gguf_bytes)  # the tiny GGUF has no chat template
    with pytest.raises(InvalidRequest) as refused:
        store.add(_manifest("plain", digest, chat_format=None))
    assert refused.value.param == "chat_format" and "chat template" in str(refused.value)
    assert store.add(_manifest("chatty", digest, chat_format="chatml")).chat_format == "chatml"
    templated = write_tiny_llama_gguf(tmp_path / "templated.gguf",
                                      chat_template="{{ messages[0]['content'] }}")
    with_template = _upload(store, templated.read_bytes())
    assert store.add(_manifest("own", with_template, chat_format=None)).chat_format is None


def test_llama_options_are_validated_and_kept(tmp_path: Path, gguf_bytes: bytes) -> None:
    store = ModelStore(tmp_path)
    digest = _upload(store, gguf_bytes)
    plain = store.add(_manifest("plain", digest))
    assert "options" not in plain.to_dict()  # manifests without options keep their digest
    tuned = store.add(_manifest("tuned", digest, options={
        "parallel": 8, "n_gpu_layers": -1, "flash_attn": True, "min_p": 0, "top_k": 20}))
    assert store.get("tuned").options == tuned.options
    gpus = store.add(_manifest("gpus", digest, options={
        "n_gpu_layers": "auto", "main_gpu": 1, "tensor_split": [3, 1.5], "min_p": 0.1}))
    assert store.get("gpus").options["tensor_split"] == [3, 1.5]
    # Floats are named in the digest by their text: a different value, a different digest.
    assert gpus.digest() != replace(gpus, options={**gpus.options, "min_p": 0.2}).digest()
    assert tuned.digest() != replace(tuned, options={}).digest()


@pytest.mark.parametrize(("options", "param"), [
    ({"paralel": 2}, "options.paralel"),  # unknown
    ({"parallel": 0}, "options.parallel"), ({"parallel": 65}, "options.parallel"),
    ({"parallel": 2.5}, "options.parallel"), ({"parallel": True}, "options.parallel"),
    ({"flash_attn": 1}, "options.flash_attn"), ({"min_p": 2}, "options.min_p"),
    ({"min_p": "0.1"}, "options.min_p"), ({"min_p": float("nan")}, "options.min_p"),
    ({"min_p": True}, "options.min_p"),
    ({"n_gpu_layers": "all"}, "options.n_gpu_layers"),
    ({"n_gpu_layers": -2}, "options.n_gpu_layers"), ({"main_gpu": -1}, "options.main_gpu"),
    ({"tensor_split": []}, "options.tensor_split"),
    ({"tensor_split": [1, -1]}, "options.tensor_split[1]"),
    ({"tensor_split": "3,1"}, "options.tensor_split"),
    ({"tensor_split": [1] * 17}, "options.tensor_split"),
    ([("parallel", 2)], "options"),
])
def test_bad_llama_options_are_refused(tmp_path: Path, gguf_bytes: bytes,
                                       options: object, param: str) -> None:
    store = ModelStore(tmp_path)
    digest = _upload(store, gguf_bytes)
    with pytest.raises(InvalidRequest) as refused:
        store.add(_manifest("bad", digest, options=options))
    assert refused.value.param == param
    assert store.list() == []


def test_options_are_for_llama_models_only() -> None:
    with pytest.raises(InvalidRequest) as refused:
        _manifest("onnx-model", "a" * 64, runtime="onnx", options={"parallel": 2})
    assert refused.value.param == "options"


@pytest.mark.parametrize(("fields", "param"), [
    ({"name": "a..b"}, "name"), ({"name": 7}, "name"), ({"weights": "sha256:" + "A" * 64},
                                                        "weights"),
    ({"runtime": "vllm"}, "runtime"), ({"chat_format": "alpaca"}, "chat_format"),
    ({"owner": ""}, "owner"), ({"owner": "x" * 129}, "owner"), ({"size": "3"}, "size"),
    ({"context_length": 8}, "context_length"), ({"context_length": True}, "context_length"),
    ({"price": {"request": -1}}, "price.request"),
    ({"price": {"request": 2**40 + 1}}, "price.request"), ({"price": {"tip": 1}}, "price.tip"),
    ({"price": 5}, "price"), ({"datanets": ["Bad Name"]}, "datanets[0]"),
    ({"datanets": "books"}, "datanets"), ({"data_share_ppm": 1_000_001}, "data_share_ppm"),
    ({"data_share_ppm": 5}, "data_share_ppm"),  # a data share needs a datanet
    ({"unmatched_data_to": "nobody"}, "unmatched_data_to"),
    ({"max_batch_size": 0}, "max_batch_size"), ({"batch_delay_us": -1}, "batch_delay_us"),
    ({"tokenizer": "zz"}, "tokenizer"), ({"federate": "no"}, "federate"),
    ({"embedding_output": ""}, "embedding_output"),
    ({"influence_layer": {"features": "x", "weights": "w"}}, "influence_layer.bias"),
    ({"influence_layer": {"features": "x", "weights": "w", "bias": "b", "source": "me"}},
     "influence_layer.source"),
    ({"inputs": [5]}, "inputs[0]"), ({"colour": "red"}, "colour"),
])
def test_a_bad_manifest_is_a_400_naming_the_field(fields: dict[str, object],
                                                  param: str) -> None:
    data = {**_manifest("m", "a" * 64).to_dict(), **fields}
    with pytest.raises(InvalidRequest) as refused:
        Manifest(**data)  # type: ignore[arg-type]
    assert refused.value.param == param
    if "colour" not in fields:  # a stored file's unknown field is ignored (below)
        with pytest.raises(InvalidRequest) as refused:
            Manifest.from_dict(json.loads(json.dumps(data)))
        assert refused.value.param == param


def test_a_stored_manifest_may_hold_fields_edged_no_longer_knows() -> None:
    manifest = _manifest("m", "a" * 64, created=1)
    assert Manifest.from_dict({**manifest.to_dict(), "family": "llama"}) == manifest


def test_a_manifest_holds_tuples_and_bare_digests_and_whole_numbers_stay_ints() -> None:
    manifest = _manifest("m", "sha256:" + "a" * 64, datanets=["books"], label_names=["x"],
                         tokenizer="sha256:" + "b" * 64,
                         options={"min_p": 0, "repeat_penalty": 1.5, "tensor_split": [3, 1.0]})
    assert manifest.weights == "a" * 64 and manifest.tokenizer == "b" * 64
    assert manifest.datanets == ("books",) and manifest.label_names == ("x",)
    assert manifest.options == {"min_p": 0, "repeat_penalty": 1.5, "tensor_split": [3, 1.0]}
    assert type(manifest.options["min_p"]) is int
    assert [type(x) for x in manifest.options["tensor_split"]] == [int, float]
    with pytest.raises(dataclasses.FrozenInstanceError):
        manifest.name = "other"  # type: ignore[misc]
    with pytest.raises(InvalidRequest) as refused:
        replace(manifest, context_length=1)
    assert refused.value.param == "context_length"
