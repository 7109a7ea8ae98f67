"""A tiny llama-architecture GGUF for tests: loads in milliseconds, generates deterministically.

Vocabulary (SentencePiece/"llama" tokenizer, 260 tokens)::

    0 <unk>    UNKNOWN
    1 <s>      CONTROL  (BOS; ``add_bos_token`` is true)
    2 </s>     CONTROL  (EOS)
    3..258     <0x00>..<0xFF>  BYTE
    259 "▁"    NORMAL

A byte-only SPM vocabulary is *not* enough on its own: llama.cpp's SPM tokenizer always
rewrites spaces as "▁" (U+2581) before segmenting, and when "▁" is not a token it falls
back to its three UTF-8 byte tokens, which detokenize to "▁" rather than " ". With "▁" as
a NORMAL token a space round-trips as one token that renders as " ". ``add_space_prefix``
is false so ``"abc"`` tokenizes to exactly BOS + 3 byte tokens.

Weights are random (seeded) F32 with one trick so that generated text is readable: the
embedding dimension 0 of every token is a constant and nothing writes to it (the attention
output and FFN-down rows for dimension 0 are zero), so after the final RMS norm it is a
near-constant, and column 0 of the output matrix acts as a per-token logit bias. Printable
ASCII and "▁" get a positive bias, everything else (control bytes, ``</s>``, ``<unk>``) a
negative one, so greedy output is printable ASCII that still depends on the context.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from edged.manifest import RUNTIMES, Manifest
from edged.models import ModelStore

N_EMBD = 64
N_HEAD = 2
N_LAYER = 2
N_FF = 128
SPACE_PIECE = "\u2581"
BOS_ID = 1
EOS_ID = 2
FIRST_BYTE_ID = 3
SPACE_ID = FIRST_BYTE_ID + 256
N_VOCAB = SPACE_ID + 1

_BIAS_DIM_VALUE = 4.0  # value of embedding dimension 0; larger than the other dims' spread


def byte_token(value: int) -> int:
    """The token id of the byte token ``<0xVV>``."""
    return FIRST_BYTE_ID + value


def _vocabulary() -> tuple[list[str], list[float], list[int]]:
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + [SPACE_PIECE]
    scores = [0.0] * 3 + [0.0] * 256 + [-1.0]
    types = (
        [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
        + [gguf.TokenType.BYTE] * 256
        + [gguf.TokenType.NORMAL]
    )
    return tokens, scores, [int(t) for t in types]


def _logit_bias() -> np.ndarray:
    bias = np.full(N_VOCAB, -6.0, dtype=np.float32)
    printable = [byte_token(b) for b in range(0x20, 0x7F)] + [SPACE_ID]
    bias[printable] = 3.0
    bias[[0, BOS_ID]] = -10.0
    bias[EOS_ID] = -8.0
    return bias


def write_tiny_llama_gguf(
    path: Path, *, context_length: int = 256, seed: int = 0, chat_template: str | None = None
) -> Path:
    """Write a 2-layer, 64-dim llama model with a byte-level vocabulary to ``path``.

    The same arguments always give the same file. ``chat_template``, when given, is stored
    as ``tokenizer.chat_template`` (a Jinja2 template, as in Hugging Face GGUFs).
    Returns ``path``.
    """
    rng = np.random.default_rng(seed)

    def normal(shape: tuple[int, ...], std: float) -> np.ndarray:
        return (rng.standard_normal(shape) * std).astype(np.float32)

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("edged-tiny-llama")
    writer.add_context_length(context_length)
    writer.add_embedding_length(N_EMBD)
    writer.add_block_count(N_LAYER)
    writer.add_feed_forward_length(N_FF)
    writer.add_head_count(N_HEAD)
    writer.add_head_count_kv(N_HEAD)
    writer.add_rope_dimension_count(N_EMBD // N_HEAD)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)

    tokens, scores, types = _vocabulary()
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(BOS_ID)
    writer.add_eos_token_id(EOS_ID)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    writer.add_add_space_prefix(False)
    if chat_template is not None:
        writer.add_chat_template(chat_template)

    # numpy shapes are (out, in): gguf reverses them into ggml's (ne0=in, ne1=out).
    embeddings = normal((N_VOCAB, N_EMBD), 1.0)
    embeddings[:, 0] = _BIAS_DIM_VALUE
    output = normal((N_VOCAB, N_EMBD), 0.3)
    # After RMS norm dimension 0 is about _BIAS_DIM_VALUE / rms ~= 3.6.
    output[:, 0] = _logit_bias() / 3.6
    writer.add_tensor("token_embd.weight", embeddings)
    writer.add_tensor("output_norm.weight", np.ones(N_EMBD, dtype=np.float32))
    writer.add_tensor("output.weight", output)

    attn_std = 1.0 / np.sqrt(N_EMBD)
    for layer in range(N_LAYER):
        prefix = f"blk.{layer}"
        attn_out = normal((N_EMBD, N_EMBD), attn_std)
        ffn_down = normal((N_EMBD, N_FF), 1.0 / np.sqrt(N_FF))
        # Keep the bias dimension constant through the residual stream.
        attn_out[0, :] = 0.0
        ffn_down[0, :] = 0.0
        writer.add_tensor(f"{prefix}.attn_norm.weight", np.ones(N_EMBD, dtype=np.float32))
        writer.add_tensor(f"{prefix}.attn_q.weight", normal((N_EMBD, N_EMBD), attn_std))
        writer.add_tensor(f"{prefix}.attn_k.weight", normal((N_EMBD, N_EMBD), attn_std))
        writer.add_tensor(f"{prefix}.attn_v.weight", normal((N_EMBD, N_EMBD), attn_std))
        writer.add_tensor(f"{prefix}.attn_output.weight", attn_out)
        writer.add_tensor(f"{prefix}.ffn_norm.weight", np.ones(N_EMBD, dtype=np.float32))
        writer.add_tensor(f"{prefix}.ffn_gate.weight", normal((N_FF, N_EMBD), attn_std))
        writer.add_tensor(f"{prefix}.ffn_up.weight", normal((N_FF, N_EMBD), attn_std))
        writer.add_tensor(f"{prefix}.ffn_down.weight", ffn_down)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def install_tiny_llama(data_dir: Path, model_file: Path, name: str = "tiny",
                       **manifest_fields: Any) -> Manifest:
    """Register the tiny GGUF in a node's model store, as ``edged models add`` would."""
    store = ModelStore(data_dir / "models", runtimes=RUNTIMES)
    data = model_file.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if not store.has_blob(digest):
        with store.blob_writer(digest) as handle:
            handle.write(data)
    # The tiny GGUF has no chat template: completions only unless a format is given.
    fields: dict[str, Any] = {"owner": "tiny-lab", "context_length": 256, "chat_format": "none",
                              **manifest_fields}
    return store.add(Manifest(name=name, runtime="llama.cpp", weights=digest, size=len(data),
                              **fields))
