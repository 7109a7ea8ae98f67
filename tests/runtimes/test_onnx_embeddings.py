"""Text embeddings from an ONNX graph plus a Hugging Face tokenizer.json (tiny generated ones)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from edged.devtools.tiny_onnx import TextEmbedder, write_text_embedder
from runtimes.base import BackendError, ContextLengthExceeded, ModelSpec, UnsupportedOperation
from runtimes.onnx_runtime import OnnxBackend

CPU = ["CPUExecutionProvider"]
MAX_LENGTH = 6


@pytest.fixture(scope="module")
def embedder(tmp_path_factory: pytest.TempPathFactory) -> TextEmbedder:
    return write_text_embedder(tmp_path_factory.mktemp("embed"), seed=5, max_length=MAX_LENGTH)


@pytest.fixture
def backend(embedder: TextEmbedder) -> Iterator[OnnxBackend]:
    spec = ModelSpec(name="embedder", path=embedder.path, options={
        "providers": CPU, "tokenizer_path": str(embedder.tokenizer_path),
        "embedding_output": "last_hidden_state"})
    loaded = OnnxBackend.load(spec)
    yield loaded
    loaded.close()


def test_vectors_are_masked_mean_pooled_and_normalised(
        backend: OnnxBackend, embedder: TextEmbedder) -> None:
    texts = ["the cat sat on the mat", "a dog", "Dog ran zebra"]  # zebra: [UNK]
    result = backend.embed(texts)
    assert len(result.vectors) == 3
    for text, vector in zip(texts, result.vectors, strict=True):
        assert len(vector) == 8
        np.testing.assert_allclose(vector, embedder.reference(text), rtol=1e-5, atol=1e-6)
        assert abs(np.linalg.norm(vector) - 1.0) < 1e-5
    assert result.prompt_tokens == 6 + 2 + 3  # non-pad tokens only


def test_a_batch_of_different_lengths_equals_single_calls(backend: OnnxBackend) -> None:
    texts = ["the cat", "a dog ran on the mat", "mat"]
    batch = backend.embed(texts)
    for text, vector in zip(texts, batch.vectors, strict=True):
        single = backend.embed([text])
        np.testing.assert_allclose(vector, single.vectors[0], rtol=1e-6, atol=1e-7)
    assert batch.prompt_tokens == sum(backend.embed([t]).prompt_tokens for t in texts)


def test_a_text_longer_than_the_tokenizers_limit_is_refused(backend: OnnxBackend) -> None:
    with pytest.raises(ContextLengthExceeded) as caught:
        backend.embed(["the cat", "the cat sat on the mat again"])  # 7 tokens > 6
    assert caught.value.prompt_tokens == 7
    assert caught.value.context_length == MAX_LENGTH
    assert len(backend.embed(["the cat sat on the mat"]).vectors) == 1  # 6 fits


def test_max_length_option_overrides_the_tokenizer(embedder: TextEmbedder) -> None:
    spec = ModelSpec(name="embedder", path=embedder.path, options={
        "providers": CPU, "tokenizer_path": str(embedder.tokenizer_path), "max_length": 2})
    loaded = OnnxBackend.load(spec)  # embedding_output defaults to the only output
    with pytest.raises(ContextLengthExceeded):
        loaded.embed(["a dog ran"])
    np.testing.assert_allclose(loaded.embed(["a dog"]).vectors[0], embedder.reference("a dog"),
                               rtol=1e-5, atol=1e-6)


def test_without_a_tokenizer_embedding_is_unsupported(embedder: TextEmbedder) -> None:
    loaded = OnnxBackend.load(ModelSpec(name="embedder", path=embedder.path,
                                        options={"providers": CPU}))
    with pytest.raises(UnsupportedOperation):
        loaded.embed(["the cat"])


def test_bad_tokenizer_or_output_fail_at_load(embedder: TextEmbedder, tmp_path: Path) -> None:
    broken = tmp_path / "tokenizer.json"
    broken.write_text("{not json")
    with pytest.raises(BackendError, match="tokenizer"):
        OnnxBackend.load(ModelSpec(name="e", path=embedder.path, options={
            "providers": CPU, "tokenizer_path": str(broken)}))
    with pytest.raises(BackendError, match="no tensor output"):
        OnnxBackend.load(ModelSpec(name="e", path=embedder.path, options={
            "providers": CPU, "tokenizer_path": str(embedder.tokenizer_path),
            "embedding_output": "pooler_output"}))
