"""GGUF models through llama-cpp-python.

Why one module of ~410 lines: it is the one backend class, whose generation, embeddings
and lifetime share the model instance, its locks and the batched engine; the engine, the
samplers, the devices and the load's placement already live in their own modules.

Generation runs on the batched engine (:mod:`runtimes.llama_batch`), one llama.cpp
context of ``parallel`` sequences (1 by default here; the daemon's ``parallel`` setting
gives 4) with native per-request sampler chains, instead of ``create_completion``: token
counts are exact, cancellation is checked before every token, and text is decoded once
per token with an incremental UTF-8 decoder (a multi-byte character split across byte
tokens comes out whole). The ``Llama`` instance holds the model, tokenizes and formats
chats.

``llama_cpp`` is imported in :meth:`LlamaCppBackend.load`, so this module imports
without it. ``verbose=False`` always: llama.cpp's verbose logs include prompt text.

``spec.options`` (all optional): ``top_k`` (40), ``min_p`` (0.05) and
``repeat_penalty`` (1.0), the sampler settings outside the request (llama.cpp's
defaults, the same as ``create_completion``'s); ``n_gpu_layers`` (``"auto"``, the default:
see :mod:`runtimes.llama_devices`; a count; -1 for all); ``main_gpu``, ``tensor_split``,
``n_batch``, ``n_ubatch``, ``flash_attn``, ``use_mmap``, ``use_mlock``, ``type_k``,
``type_v`` and ``kv_overrides``, passed to ``llama_cpp.Llama``; ``embedding_batch``,
tokens per decode step when embedding with a generative model; ``repack`` (default: see
:func:`runtimes.llama_placement.default_repack`): false is llama.cpp's ``--no-repack``,
which keeps weights out of the CPU's extra buffer types (weight repacking, AMX). Some VMs
advertise AMX but fault on its instructions; ``repack=False`` avoids that.

Embeddings use a second llama.cpp instance on the same file, kept on the CPU (mmap shares
its weight pages with the first): offloading it too would hold the weights twice in GPU
memory.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from runtimes.base import (
    Backend,
    BackendError,
    ChatMessage,
    ContextLengthExceeded,
    Delta,
    Done,
    EmbeddingResult,
    GenerationParams,
    MissingDependency,
    ModelSpec,
    Prompt,
    UnsupportedOperation,
)
from runtimes.chat_formats import (
    FormattedChat,
    TemplateChatFormat,
    chat_format_names,
    format_chat,
)
from runtimes.llama_batch import BatchEngine
from runtimes.llama_devices import offloaded_layers, processor_label
from runtimes.llama_placement import GpuPlacement, default_repack, kv_cache_bytes, llama_type
from runtimes.llama_sampling import SamplerSettings, SequenceSampler

if TYPE_CHECKING:
    from types import ModuleType

    from llama_cpp import Llama

SAMPLER_DEFAULTS: Mapping[str, float] = {"top_k": 40, "min_p": 0.05, "repeat_penalty": 1.0}
LLAMA_OPTIONS = frozenset(
    {"n_batch", "n_ubatch", "flash_attn", "use_mmap", "use_mlock", "main_gpu", "tensor_split"}
    | {"type_k", "type_v", "kv_overrides"}
)
OTHER_OPTIONS = frozenset({"repack", "embedding_batch", "parallel", "n_gpu_layers"})
# Context options the batched engine passes to llama.cpp as they are.
_ENGINE_CONTEXT_OPTIONS = ("n_ubatch", "type_k", "type_v")
DEFAULT_BATCH_TOKENS = 512  # tokens per decode step of the batched engine
COMPLETIONS_ONLY = "none"  # the chat format of a model that serves no chat
_SMALLEST_CONTEXT = 256  # llama.cpp pads any context to this


class LlamaCppBackend(Backend):
    """A GGUF model loaded with llama.cpp. Chat prompts are formatted with
    ``spec.chat_format`` or, when that is ``None``, the GGUF's own chat template."""

    runtime = "llama.cpp"

    def __init__(self, spec: ModelSpec, llm: Llama, llama_cpp: ModuleType) -> None:
        self.spec = spec
        self._llama_cpp = llama_cpp
        self._llm: Llama | None = llm
        self._embedder: Llama | None = None
        self._guard = threading.Lock()  # the model instance: tokenizing, templates, close
        self._embed_guard = threading.Lock()  # the embedding context
        self._llama_kwargs = {k: v for k, v in spec.options.items() if k in LLAMA_OPTIONS}
        self._n_vocab = llm.n_vocab()
        self._metadata = llm.metadata
        self._repack = bool(spec.options.get("repack", default_repack()))
        self._vocab = llm._model.vocab  # llama-cpp-python exposes no public vocab handle
        self._pieces: dict[int, bytes | None] = {}  # token id -> bytes, None for end-of-generation
        self._template = _chat_template(llm)  # the GGUF's own, if it has one
        self._gpu = GpuPlacement(n_gpu_layers=0)  # load() sets what it planned and measured
        self._sampler = _sampler_settings(spec)
        # The engine holds the generation context (``parallel`` sequences), ``llm`` the
        # model, its vocabulary and metadata.
        self._engine: BatchEngine | None = _batch_engine(llama_cpp, llm, spec, self._piece)
        self._n_ctx = min(spec.context_length, self._engine.context_length)
        self._weights_bytes = spec.path.stat().st_size
        self._kv_bytes_per_context = kv_cache_bytes(self._metadata, self._n_ctx)

    @classmethod
    def load(cls, spec: ModelSpec) -> LlamaCppBackend:
        """Load the GGUF at ``spec.path``.

        Raises :class:`MissingDependency` when llama-cpp-python is not installed.
        """
        try:
            import llama_cpp
        except ImportError:
            raise MissingDependency("llama-cpp-python", "llama") from None
        unknown = set(spec.options) - LLAMA_OPTIONS - OTHER_OPTIONS - set(SAMPLER_DEFAULTS)
        if unknown:
            raise BackendError(f"unknown llama.cpp options {sorted(unknown)}")
        if _parallel(spec) < 1:
            raise BackendError("the llama.cpp option 'parallel' must be at least 1")
        if not spec.path.is_file():
            raise BackendError(f"the weights file of model {spec.name!r} is missing")
        kwargs = {k: v for k, v in spec.options.items() if k in LLAMA_OPTIONS}
        gpu = GpuPlacement.plan(llama_cpp, spec, parallel=_parallel(spec))
        kwargs["n_gpu_layers"] = gpu.n_gpu_layers
        # This instance only holds the model and tokenizes (the batched engine has the
        # generation context): its own context is kept at llama.cpp's smallest.
        n_ctx = min(spec.context_length, _SMALLEST_CONTEXT)
        try:
            llm = llama_type(llama_cpp, bool(spec.options.get("repack", default_repack())))(
                model_path=str(spec.path),
                n_ctx=n_ctx,
                n_threads=spec.threads,
                verbose=False,
                **kwargs,
            )
        except ValueError:  # llama-cpp-python's message names the path: keep it out
            raise BackendError(f"llama.cpp could not load model {spec.name!r}") from None
        try:
            backend = cls(spec, llm, llama_cpp)
            backend._gpu = gpu.loaded(llama_cpp)
            return backend
        except BaseException:  # the batched engine could not be made
            llm.close()
            raise

    # -- generation -------------------------------------------------------------------

    def generate(
        self, prompt: Prompt, params: GenerationParams, cancel: threading.Event
    ) -> Iterator[Delta | Done]:
        """Tokenize and check the prompt now (errors raise here), then queue it on the
        batched engine and stream its events."""
        with self._guard:
            llm = self._require_open()
            if isinstance(prompt, str):
                tokens = self._tokenize(llm, prompt, special=False)
                stops = params.stop
            else:
                chat = self._format_chat(llm, prompt, params.tools)
                tokens = self._tokenize(llm, chat.prompt, special=True)
                stops = params.stop + tuple(s for s in chat.stop if s not in params.stop)
            if len(tokens) >= self._n_ctx:
                raise ContextLengthExceeded(len(tokens), self._n_ctx)
            engine = self._engine
            assert engine is not None  # _require_open
            sampler = SequenceSampler(self._llama_cpp, self._vocab, params, self._sampler,
                                      self._text_of)
        room = self._n_ctx - len(tokens)
        limit = room if params.max_tokens is None else min(max(params.max_tokens, 0), room)
        return engine.generate(tokens, params, stops, limit, cancel, sampler)

    def _text_of(self, token: int) -> bytes:
        """A token's bytes for logprobs; end-of-generation tokens are empty."""
        return self._piece(token) or b""

    def _piece(self, token: int) -> bytes | None:
        """The bytes of ``token`` (``None`` for end-of-generation), cached per token."""
        if token not in self._pieces:
            self._pieces[token] = _token_piece(self._llama_cpp, self._vocab, token)
        return self._pieces[token]

    def _tokenize(self, llm: Llama, text: str, *, special: bool) -> list[int]:
        # add_bos=True means "add BOS/EOS as the model's metadata says" in llama.cpp
        # (tokenizer.ggml.add_bos_token), which is what create_completion follows too.
        try:
            tokens = llm.tokenize(text.encode("utf-8"), add_bos=True, special=special)
        except RuntimeError:  # its message quotes the text
            raise BackendError("llama.cpp could not tokenize the prompt") from None
        bos = llm.token_bos()
        if special and len(tokens) > 1 and tokens[0] == tokens[1] == bos:
            tokens = tokens[1:]  # a chat template that writes {{ bos_token }} itself
        return tokens

    def _format_chat(self, llm: Llama, messages: Sequence[ChatMessage],
                     tools: Sequence[Mapping[str, Any]] = ()) -> FormattedChat:
        if self.spec.chat_format == COMPLETIONS_ONLY:
            raise UnsupportedOperation(f"model {self.spec.name!r} serves completions only "
                                       f"(chat format {COMPLETIONS_ONLY!r})")
        if self.spec.chat_format is not None:
            return format_chat(messages, self.spec.chat_format)
        if self._template is None:
            raise UnsupportedOperation(
                f"model {self.spec.name!r} has no chat template: set its chat format "
                f"to one of {chat_format_names()}"
            )
        return self._template(messages, tools)

    @property
    def renders_tools(self) -> bool:
        """The GGUF's own chat template is used and renders tools itself."""
        return self.spec.chat_format is None and self._template is not None \
            and self._template.renders_tools

    # -- embeddings -------------------------------------------------------------------

    def embed(self, texts: Sequence[str]) -> EmbeddingResult:
        """L2-normalised embeddings; per-token outputs are mean-pooled."""
        if not texts:
            return EmbeddingResult([], 0)
        with self._embed_guard:
            embedder = self._embedding_model()
            tokenized = [self._tokenize(embedder, t, special=False) for t in texts]
            for tokens in tokenized:
                if len(tokens) > self._n_ctx:
                    raise ContextLengthExceeded(len(tokens), self._n_ctx)
                if not tokens:
                    raise BackendError("cannot embed an empty text with this model")
            if embedder.pooling_type() == self._llama_cpp.LLAMA_POOLING_TYPE_NONE:
                raw = [self._mean_token_embedding(embedder, tokens) for tokens in tokenized]
            else:  # the model pools (an embedding model): one vector per sequence
                raw = embedder.embed(list(texts), truncate=False)
        return EmbeddingResult([_normalise(v) for v in raw], sum(map(len, tokenized)))

    def _mean_token_embedding(self, embedder: Llama, tokens: list[int]) -> Any:
        """Decode ``tokens`` in chunks and average the per-token embeddings.

        Not ``Llama.embed``: it marks every token as an output in one batch, and a
        generative model then also fills n_vocab logits per token (1 GB for 1000 tokens
        of Gemma's 262k vocabulary); it also mis-slices per-token outputs of the second
        and later texts of a batch. Chunks keep the logits small; a causal model's KV
        cache carries the earlier chunks.
        """
        import numpy as np  # a dependency of llama-cpp-python

        llama_cpp, context, batch = self._llama_cpp, embedder._ctx, embedder._batch
        width = embedder.n_embd()
        total = np.zeros(width, dtype=np.float64)
        context.kv_cache_clear()
        try:
            for start in range(0, len(tokens), embedder.n_batch):
                chunk = tokens[start : start + embedder.n_batch]
                batch.set_batch(batch=chunk, n_past=start, logits_all=True)
                context.decode(batch)
                rows = llama_cpp.llama_get_embeddings(context.ctx)
                total += np.ctypeslib.as_array(rows, shape=(len(chunk), width)).sum(axis=0)
        finally:
            context.kv_cache_clear()
        return total / len(tokens)

    def _embedding_model(self) -> Llama:
        self._require_open()
        if self._embedder is None:
            # A second context on the same file: mmap shares the weights' pages. A causal
            # model without pooling is decoded in chunks (``embedding_batch`` tokens,
            # by default as many as keep the logits buffer near 32 MB); a pooling or
            # bidirectional model needs each text in one batch.
            meta, arch = self._metadata, self._metadata.get("general.architecture", "")
            chunk = self._n_ctx
            if meta.get(f"{arch}.pooling_type", "0") in ("0", "-1") and (
                meta.get(f"{arch}.attention.causal", "true") != "false"
            ):
                default = max(8, min(512, (8 << 20) // max(self._n_vocab, 1)))
                chunk = min(int(self.spec.options.get("embedding_batch", default)), self._n_ctx)
            kwargs = {**self._llama_kwargs, "n_batch": chunk, "n_ubatch": chunk}
            self._embedder = llama_type(self._llama_cpp, self._repack)(
                model_path=str(self.spec.path),
                n_ctx=self._n_ctx,
                n_threads=self.spec.threads,
                embedding=True,
                verbose=False,
                **kwargs,
            )
        return self._embedder

    # -- lifetime ---------------------------------------------------------------------

    def close(self) -> None:
        """Free the engine and both llama.cpp instances; a running generation ends with
        an error, a running embedding call on another thread is waited for."""
        with self._guard:
            engine, self._engine = self._engine, None
        if engine is not None:  # before the model it was made from
            engine.close()
        for guard, attribute in ((self._guard, "_llm"), (self._embed_guard, "_embedder")):
            with guard:
                self._free(attribute)

    def _free(self, attribute: str) -> None:
        llm: Llama | None = getattr(self, attribute)
        setattr(self, attribute, None)
        if llm is not None:
            llm.close()

    def memory_bytes(self) -> int:
        """Weights file size plus the f16 KV cache of each live context."""
        generating = self._engine.parallel if self._engine is not None else 0
        contexts = generating + (self._embedder is not None)
        return self._weights_bytes + contexts * self._kv_bytes_per_context

    def describe(self) -> dict[str, Any]:
        """Where the model runs: the layers offloaded (of the repeating blocks plus the
        output layer), the GPU memory its load took as the devices reported it, and the
        split in ``ollama ps``'s words (by that memory; by layers if none was measured)."""
        architecture = self._metadata.get("general.architecture", "")
        blocks = int(self._metadata.get(f"{architecture}.block_count", 0) or 0)
        layers = blocks + 1
        offloaded = offloaded_layers(self._gpu.n_gpu_layers, blocks)
        device = self._gpu.device_bytes
        if device:
            processor = processor_label(max(0, self.memory_bytes() - device), device)
        else:
            processor = processor_label(layers - offloaded, offloaded)
        return {"runtime": self.runtime, "processor": processor, "layers": layers,
                "gpu_layers": offloaded, "device_memory_bytes": device,
                "parallel": self.max_concurrency}

    @property
    def embeds_apart(self) -> bool:
        """Embeddings use their own llama context (and lock)."""
        return True

    @property
    def max_concurrency(self) -> int:
        """The batched engine's slots (``parallel``)."""
        return _parallel(self.spec)

    def _require_open(self) -> Llama:
        if self._llm is None or self._engine is None:
            raise BackendError(f"model {self.spec.name!r} is closed")
        return self._llm


def _normalise(vector: Any) -> list[float]:
    import numpy as np

    array = np.asarray(vector, dtype=np.float64)
    norm = float(np.linalg.norm(array))
    result: list[float] = (array / norm if norm > 0 else array).tolist()
    return result


def _parallel(spec: ModelSpec) -> int:
    return int(spec.options.get("parallel", 1))


def _batch_engine(llama_cpp: ModuleType, llm: Llama, spec: ModelSpec,
                  piece: Callable[[int], bytes | None]) -> BatchEngine:
    """A batched context on ``llm``'s model, with the model's context options."""
    options = spec.options
    n_batch = int(options.get("n_batch", DEFAULT_BATCH_TOKENS))
    context_options = {k: options[k] for k in _ENGINE_CONTEXT_OPTIONS if k in options}
    if "n_ubatch" in context_options:
        context_options["n_ubatch"] = min(int(context_options["n_ubatch"]), n_batch)
    if "flash_attn" in options:  # else llama.cpp's default: on where the backend has it
        context_options["flash_attn_type"] = (llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
                                              if options["flash_attn"] else
                                              llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED)
    return BatchEngine(llama_cpp, llm._model.model, parallel=_parallel(spec),
                       context_length=spec.context_length, threads=spec.threads,
                       n_batch=n_batch, context_options=context_options,
                       piece=piece)


def _chat_template(llm: Llama) -> TemplateChatFormat | None:
    """The GGUF's ``tokenizer.chat_template`` with its BOS and EOS texts, if it has one."""
    template = llm.metadata.get("tokenizer.chat_template")
    if not template:
        return None
    bos, eos = llm.token_bos(), llm.token_eos()
    return TemplateChatFormat(template,
                              bos_token=llm._model.token_get_text(bos) if bos >= 0 else "",
                              eos_token=llm._model.token_get_text(eos) if eos >= 0 else "")


def _sampler_settings(spec: ModelSpec) -> SamplerSettings:
    """The model's sampler defaults: its manifest options, else llama.cpp's."""
    return SamplerSettings(**{k: type(getattr(SamplerSettings, k))(spec.options[k])
                              for k in SAMPLER_DEFAULTS if k in spec.options})


def _token_piece(llama_cpp: ModuleType, vocab: Any, token: int) -> bytes | None:
    """The bytes of ``token``; ``None`` for end-of-generation."""
    if llama_cpp.llama_vocab_is_eog(vocab, token):
        return None
    # special=False renders control tokens as nothing, as create_completion does.
    # Called directly: the wrapper returns a fixed 32-byte buffer, padding included.
    size = 64
    buffer = ctypes.create_string_buffer(size)
    written = llama_cpp.llama_token_to_piece(vocab, token, buffer, size, 0, False)
    if written < 0:  # the piece is longer: -written is its size
        size = -written
        buffer = ctypes.create_string_buffer(size)
        written = llama_cpp.llama_token_to_piece(vocab, token, buffer, size, 0, False)
    return buffer.raw[:written]
