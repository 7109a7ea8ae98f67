"""A deterministic backend for scheduler and API-shape tests only.

It "tokenises" text into UTF-8 bytes and "generates" a fixed cycle of words
chosen by a hash of the prompt and seed, so the same request always produces
the same output. ``options``: ``token_delay`` (seconds slept per token, to
exercise queues and cancellation), ``vocabulary`` (the words to cycle) and
``fail_after`` (raise a RuntimeError after that many tokens, to exercise failures) and
``echo`` (generate the prompt's own words, to check that outputs never leak).
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator, Sequence

from runtimes.base import (
    Backend,
    ChatMessage,
    ContextLengthExceeded,
    Delta,
    Done,
    EmbeddingResult,
    GenerationParams,
    InvalidInput,
    ModelSpec,
    Prompt,
)

_DEFAULT_WORDS = ("alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta")
EMBEDDING_DIMENSIONS = 8


class FakeBackend(Backend):
    runtime = "fake"

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self.token_delay = float(spec.options.get("token_delay", 0.0))
        self.words = tuple(spec.options.get("vocabulary", _DEFAULT_WORDS))
        self.fail_after: int | None = spec.options.get("fail_after")
        self.echo = bool(spec.options.get("echo", False))
        self.closed = False
        self.active = 0  # calls running now; tests read it
        self._lock = threading.Lock()

    @classmethod
    def load(cls, spec: ModelSpec) -> FakeBackend:
        time.sleep(float(spec.options.get("load_delay", 0.0)))
        return cls(spec)

    def _prompt_text(self, prompt: Prompt) -> str:
        if isinstance(prompt, str):
            return prompt
        return "".join(f"<{m.role}>{m.content}" for m in prompt if isinstance(m, ChatMessage))

    def generate(
        self, prompt: Prompt, params: GenerationParams, cancel: threading.Event
    ) -> Iterator[Delta | Done]:
        text = self._prompt_text(prompt)
        prompt_tokens = len(text.encode("utf-8"))
        words = tuple(text.split()) if self.echo and text.split() else self.words
        if prompt_tokens >= self.spec.context_length:
            raise ContextLengthExceeded(prompt_tokens, self.spec.context_length)
        # What only a real sampler can do is refused, never silently ignored.
        for name, asked in (("response_format", params.grammar is not None),
                            ("logprobs", params.logprobs is not None),
                            ("logit_bias", bool(params.logit_bias))):
            if asked:
                raise InvalidInput(f"the fake runtime has no {name}", param=name)
        return self._run(text, prompt_tokens, params, cancel, words)

    def _run(
        self, text: str, prompt_tokens: int, params: GenerationParams, cancel: threading.Event,
        words: tuple[str, ...],
    ) -> Iterator[Delta | Done]:
        with self._lock:
            self.active += 1
        try:
            seed = hashlib.sha256(f"{params.seed}|{text}".encode()).digest()
            budget = self.spec.context_length - prompt_tokens
            limit = budget if params.max_tokens is None else min(params.max_tokens, budget)
            produced = ""
            for count in range(limit):
                if cancel.is_set():
                    yield Done(prompt_tokens, count, "cancelled")
                    return
                if self.token_delay:
                    time.sleep(self.token_delay)
                if self.fail_after is not None and count >= self.fail_after:
                    raise RuntimeError("fake backend failure")
                piece = words[(seed[count % 32] + count) % len(words)] + " "
                produced += piece
                for stop in params.stop:
                    if stop in produced:
                        yield Done(prompt_tokens, count + 1, "stop")
                        return
                yield Delta(piece, 1)
            yield Done(prompt_tokens, limit, "length")
        finally:
            with self._lock:
                self.active -= 1

    def embed(self, texts: Sequence[str]) -> EmbeddingResult:
        vectors = []
        for text in texts:
            digest = hashlib.sha256(text.encode("utf-8")).digest()
            vectors.append([byte / 255.0 for byte in digest[:EMBEDDING_DIMENSIONS]])
        return EmbeddingResult(vectors, sum(len(t.encode("utf-8")) for t in texts))

    def close(self) -> None:
        self.closed = True

    def memory_bytes(self) -> int:
        return 1024

    @property
    def max_concurrency(self) -> int:
        return int(self.spec.options.get("max_concurrency", 1))
