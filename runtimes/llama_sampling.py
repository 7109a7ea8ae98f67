"""One request's sampling on a llama.cpp context: a native sampler chain, an optional
grammar, and log-probabilities.

The chain is llama.cpp's own (``llama_sampler_chain``), in the order its common sampler
uses: logit bias, penalties (repetition, frequency, presence), then either greedy or
top-k, top-p, min-p, temperature and a seeded draw. Without a grammar one native call,
``llama_sampler_sample``, reads the logits, applies the chain and accepts the token.

A grammar (GBNF) is checked the way llama.cpp's common sampler does it: the chain picks a
token first and the grammar only checks that one token; only when it is rejected are
the candidates filtered by the grammar and the chain applied again. Filtering the whole
vocabulary (262,144 tokens for Gemma 3) costs more than the decode, so the filter first
runs on the :data:`GRAMMAR_CANDIDATES` most likely tokens, and on the whole vocabulary
only when none of those is allowed (or a logit bias may lift a token from further down).
For greedy decoding that picks the same token whenever an allowed one is among them.

Log-probabilities are those of the model's distribution (a log-softmax of the raw
logits, before bias, penalties, temperature or grammar), as OpenAI's are of the model's.
"""

from __future__ import annotations

import ctypes
import math
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from runtimes.base import GenerationParams, InvalidInput, TokenLogprob

MAX_TOP_LOGPROBS = 20
GRAMMAR_CANDIDATES = 256  # likeliest tokens the grammar filters first on a rejection
_TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])


@dataclass(frozen=True)
class SamplerSettings:
    """The model's sampler defaults (manifest options), for what a request leaves out."""

    top_k: int = 40
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    penalty_last_n: int = 64


class SequenceSampler:
    """Picks the tokens of one generation; made on the caller's thread (so a bad grammar
    or bias raises :class:`InvalidInput` there), used by the engine's step thread."""

    def __init__(self, llama_cpp: ModuleType, vocab: Any, params: GenerationParams,
                 defaults: SamplerSettings, piece: Callable[[int], bytes]) -> None:
        self._llama_cpp = llama_cpp
        self._n_vocab = int(llama_cpp.llama_vocab_n_tokens(vocab))
        self._piece = piece
        self._top_logprobs = params.logprobs
        if params.logprobs is not None and not 0 <= params.logprobs <= MAX_TOP_LOGPROBS:
            raise InvalidInput(f"top_logprobs must be within 0..{MAX_TOP_LOGPROBS}",
                               param="top_logprobs")
        self._grammar: Any = None
        self._narrow: Any = None
        self._candidates: np.ndarray | None = None
        if params.grammar is not None:
            self._grammar = llama_cpp.llama_sampler_init_grammar(
                vocab, params.grammar.encode(), b"root")
            if not self._grammar:
                raise InvalidInput("the grammar could not be parsed", param="response_format")
            self._candidates = np.empty(self._n_vocab, dtype=_TOKEN_DATA)
            if not params.logit_bias:
                self._narrow = llama_cpp.llama_sampler_init_top_k(GRAMMAR_CANDIDATES)
        try:
            self._chain = self._new_chain(params, defaults)
        except BaseException:
            self.close()
            raise

    def sample(self, ctx: Any, index: int) -> tuple[int, TokenLogprob | None]:
        """The next token from the logits of batch row ``index``, accepted by the chain
        (and grammar), with its log-probability when the request asked for them."""
        llama_cpp = self._llama_cpp
        if self._grammar is None:
            token = int(llama_cpp.llama_sampler_sample(self._chain, ctx, index))
        else:
            token = self._sample_with_grammar(ctx, index)
        logprob = None
        if self._top_logprobs is not None:
            logprob = self._logprob(ctx, index, token)
        return token, logprob

    def close(self) -> None:
        """Free the native samplers. Idempotent."""
        for attribute in ("_chain", "_grammar", "_narrow"):
            sampler = getattr(self, attribute, None)
            if sampler:
                self._llama_cpp.llama_sampler_free(sampler)
            setattr(self, attribute, None)

    # -- internals ----------------------------------------------------------------------

    def _new_chain(self, params: GenerationParams, defaults: SamplerSettings) -> Any:
        llama_cpp = self._llama_cpp
        chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        add = llama_cpp.llama_sampler_chain_add
        if params.logit_bias:
            add(chain, self._logit_bias(params.logit_bias))
        repeat = defaults.repeat_penalty if params.repeat_penalty is None \
            else params.repeat_penalty
        if repeat != 1.0 or params.frequency_penalty or params.presence_penalty:
            add(chain, llama_cpp.llama_sampler_init_penalties(
                self._n_vocab, defaults.penalty_last_n, repeat, params.frequency_penalty,
                params.presence_penalty))
        if params.temperature <= 0:
            add(chain, llama_cpp.llama_sampler_init_greedy())
            return chain
        top_k = defaults.top_k if params.top_k is None else params.top_k
        min_p = defaults.min_p if params.min_p is None else params.min_p
        seed = llama_cpp.LLAMA_DEFAULT_SEED if params.seed is None else params.seed % 0xFFFFFFFF
        add(chain, llama_cpp.llama_sampler_init_top_k(top_k))
        add(chain, llama_cpp.llama_sampler_init_top_p(params.top_p, 1))
        add(chain, llama_cpp.llama_sampler_init_min_p(min_p, 1))
        add(chain, llama_cpp.llama_sampler_init_temp(params.temperature))
        add(chain, llama_cpp.llama_sampler_init_dist(seed))
        return chain

    def _logit_bias(self, bias: tuple[tuple[int, float], ...]) -> Any:
        llama_cpp = self._llama_cpp
        for token, value in bias:
            if not 0 <= token < self._n_vocab:
                raise InvalidInput(f"logit_bias names token {token}; this model's "
                                   f"vocabulary has {self._n_vocab}", param="logit_bias")
            if not math.isfinite(value):
                raise InvalidInput("logit_bias values must be finite", param="logit_bias")
        entries = (llama_cpp.llama_logit_bias * len(bias))(
            *(llama_cpp.llama_logit_bias(token, value) for token, value in bias))
        return llama_cpp.llama_sampler_init_logit_bias(self._n_vocab, len(bias), entries)

    def _sample_with_grammar(self, ctx: Any, index: int) -> int:
        llama_cpp = self._llama_cpp
        logits = self._logits(ctx, index)
        token = self._apply(self._chain, logits)
        single = np.array([(token, 1.0, 0.0)], dtype=_TOKEN_DATA)
        single_array = llama_cpp.llama_token_data_array(
            single.ctypes.data_as(llama_cpp.llama_token_data_p), 1, -1, False)
        llama_cpp.llama_sampler_apply(self._grammar, ctypes.byref(single_array))
        if not math.isfinite(float(single["logit"][0])):  # rejected: filter, pick again
            token = -1
            if self._narrow is not None:
                token = self._apply(self._chain, logits, self._narrow, self._grammar)
            if token < 0:
                token = self._apply(self._chain, logits, self._grammar)
            if token < 0:
                raise InvalidInput("no token can continue the output under the grammar",
                                   param="response_format")
        llama_cpp.llama_sampler_accept(self._grammar, token)
        llama_cpp.llama_sampler_accept(self._chain, token)
        return token

    def _apply(self, chain: Any, logits: np.ndarray, *first: Any) -> int:
        """Run the ``first`` samplers (a narrowing, the grammar), then ``chain``, over all
        candidates: the pick, or -1 when the first ones left no allowed token."""
        llama_cpp, candidates = self._llama_cpp, self._candidates
        assert candidates is not None
        candidates["id"] = np.arange(self._n_vocab, dtype=np.int32)
        candidates["logit"] = logits
        candidates["p"] = 0.0
        array = llama_cpp.llama_token_data_array(
            candidates.ctypes.data_as(llama_cpp.llama_token_data_p), self._n_vocab, -1, False)
        for sampler in first:
            llama_cpp.llama_sampler_apply(sampler, ctypes.byref(array))
        # The narrowing sorts; the grammar then sets rejected logits to -inf in place, so
        # the order no longer holds (greedy would take a rejected first entry).
        array.sorted = False
        kept = np.ctypeslib.as_array(array.data, shape=(array.size,))
        if not np.isfinite(kept["logit"]).any():
            return -1
        llama_cpp.llama_sampler_apply(chain, ctypes.byref(array))
        return int(array.data[array.selected].id) if array.selected >= 0 else -1

    def _logits(self, ctx: Any, index: int) -> np.ndarray:
        pointer = self._llama_cpp.llama_get_logits_ith(ctx, index)
        return np.ctypeslib.as_array(pointer, shape=(self._n_vocab,))

    def _logprob(self, ctx: Any, index: int, token: int) -> TokenLogprob:
        logits = self._logits(ctx, index).astype(np.float64)
        peak = float(logits.max())
        log_total = peak + math.log(float(np.exp(logits - peak).sum()))
        top: tuple[tuple[bytes, float], ...] = ()
        if self._top_logprobs:
            k = self._top_logprobs
            best = np.argpartition(-logits, k - 1)[:k]
            best = best[np.argsort(-logits[best], kind="stable")]
            top = tuple((self._piece(int(t)), float(logits[t] - log_total)) for t in best)
        return TokenLogprob(self._piece(token), float(logits[token] - log_total), top)
