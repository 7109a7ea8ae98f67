"""The OpenAI-compatible endpoints under /v1: thin shells over the inference service."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import secrets
import struct
import time
from collections.abc import Sequence
from typing import Any

from aiohttp import web

from attribution.receipt import SignedReceipt
from edged.errors import EdgedError, InternalError
from edged.http.common import accepts, json_response
from edged.http.federation import relay_if_remote, remote_model_objects
from edged.inference import SERVICE, GenerationStream
from edged.openai_requests import ChatBody, CompletionBody, EmbeddingBody, GenerateRequest
from edged.settings import SETTINGS
from edged.tools import CallSplitter, ToolCall, find_calls
from runtimes import Done, TokenLogprob

logger = logging.getLogger(__name__)
RECEIPT_HEADER = "X-Edged-Receipt"
NODE_HEADER = "X-Edged-Node"  # the key of the node whose receipt X-Edged-Receipt names


def add_openai_routes(app: web.Application) -> None:
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/v1/models/{name}", get_model)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/embeddings", embeddings)


def receipt_ref(receipt: SignedReceipt) -> dict[str, Any]:
    return {"id": receipt.leaf.hex(), "seq": receipt.seq, "node": receipt.node.hex()}


def _usage(done: Done) -> dict[str, int]:
    return {"prompt_tokens": done.prompt_tokens, "completion_tokens": done.completion_tokens,
            "total_tokens": done.prompt_tokens + done.completion_tokens}


def _model_object(manifest: Any) -> dict[str, Any]:
    return {"id": manifest.name, "object": "model", "created": manifest.created,
            "owned_by": manifest.owner}


async def list_models(request: web.Request) -> web.Response:
    manifests = request.app[SERVICE].store.list()
    return json_response({"object": "list", "data": [_model_object(m) for m in manifests]
                          + remote_model_objects(request.app)})  # federation: peers' models


async def get_model(request: web.Request) -> web.Response:
    return json_response(_model_object(request.app[SERVICE].store.get(request.match_info["name"])))


@accepts(body=ChatBody)
async def chat_completions(request: web.Request, body: ChatBody) -> web.StreamResponse:
    # Off the loop: a response format's JSON schema is compiled to a grammar (and the first
    # one imports llama_cpp), which takes tens of milliseconds or more.
    parsed = await asyncio.to_thread(
        body.request, default_max_tokens=request.app[SETTINGS].default_max_tokens)
    return await _generate(request, parsed)


@accepts(body=CompletionBody)
async def completions(request: web.Request, body: CompletionBody) -> web.StreamResponse:
    parsed = await asyncio.to_thread(  # off the loop, as for chat
        body.request, default_max_tokens=request.app[SETTINGS].default_max_tokens)
    return await _generate(request, parsed)


@accepts(body=EmbeddingBody)
async def embeddings(request: web.Request, body: EmbeddingBody) -> web.Response:
    parsed = body.request()
    result = await request.app[SERVICE].embed(parsed)
    as_base64 = parsed.encoding_format == "base64"
    data = [{"object": "embedding", "index": index,
             "embedding": base64.b64encode(struct.pack(f"<{len(v)}f", *v)).decode()
             if as_base64 else v}
            for index, v in enumerate(result.vectors)]
    return json_response(
        {"object": "list", "data": data, "model": parsed.model,
         "usage": {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens},
         "receipt": receipt_ref(result.receipt)},
        headers={RECEIPT_HEADER: result.receipt.leaf.hex()})


class _Shape:
    """The OpenAI object shapes of one generation, chat or completion."""

    def __init__(self, parsed: GenerateRequest) -> None:
        self.chat = parsed.kind == "chat"
        self.id = ("chatcmpl-" if self.chat else "cmpl-") + secrets.token_hex(12)
        self.created = int(time.time())
        self.model = parsed.model
        self.logprobs = parsed.params.logprobs is not None
        self.tools = parsed.tools
        self._offset = 0  # characters of text before the next chunk (completion logprobs)

    def _logprobs(self, text: str, entries: tuple[TokenLogprob, ...]) -> dict[str, Any] | None:
        """OpenAI's logprobs object for ``entries`` (the tokens behind ``text``)."""
        if not self.logprobs:
            return None
        if self.chat:
            return {"content": [{**_token(entry.token, entry.logprob), "top_logprobs": [
                _token(token, logprob) for token, logprob in entry.top]}
                for entry in entries], "refusal": None}
        offsets, offset = [], self._offset
        for entry in entries:
            offsets.append(offset)
            offset += len(entry.token.decode("utf-8", errors="replace"))
        self._offset += len(text)
        return {"tokens": [_text_of(entry.token) for entry in entries],
                "token_logprobs": [entry.logprob for entry in entries],
                "top_logprobs": [{_text_of(t): lp for t, lp in entry.top} for entry in entries],
                "text_offset": offsets}

    def _envelope(self, obj: str, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model,
                "choices": choices}

    def whole(self, text: str, done: Done, receipt: SignedReceipt,
              logprobs: tuple[TokenLogprob, ...] = ()) -> dict[str, Any]:
        if self.chat:
            message: dict[str, Any] = {"role": "assistant", "content": text}
            finish_reason: str = done.finish_reason
            if self.tools is not None:
                content, calls = find_calls(text, self.tools)
                if calls:
                    message = {"role": "assistant", "content": content,
                               "tool_calls": [call.to_openai() for call in calls]}
                    finish_reason = "tool_calls"
            choice = {"index": 0, "message": message,
                      "logprobs": self._logprobs(text, logprobs),
                      "finish_reason": finish_reason}
            body = self._envelope("chat.completion", [choice])
        else:
            choice = {"index": 0, "text": text, "logprobs": self._logprobs(text, logprobs),
                      "finish_reason": done.finish_reason}
            body = self._envelope("text_completion", [choice])
        return {**body, "usage": _usage(done), "receipt": receipt_ref(receipt)}

    def chunk(self, text: str | None, finish_reason: str | None = None,
              first: bool = False, logprobs: tuple[TokenLogprob, ...] = (),
              calls: Sequence[ToolCall] = ()) -> dict[str, Any]:
        entries = self._logprobs(text or "", logprobs) if logprobs else None
        if self.chat:
            delta: dict[str, Any] = {"role": "assistant"} if first else {}
            if text is not None:
                delta["content"] = text
            if calls:
                delta["tool_calls"] = [call.to_openai(index) for index, call in enumerate(calls)]
            choice = {"index": 0, "delta": delta, "logprobs": entries,
                      "finish_reason": finish_reason}
            return self._envelope("chat.completion.chunk", [choice])
        choice = {"index": 0, "text": text or "", "logprobs": entries,
                  "finish_reason": finish_reason}
        return self._envelope("text_completion", [choice])


def _text_of(token: bytes) -> str:
    return token.decode("utf-8", errors="replace")


def _token(token: bytes, logprob: float) -> dict[str, Any]:
    """One token in chat logprobs: its text, log-probability and UTF-8 bytes."""
    return {"token": _text_of(token), "logprob": logprob, "bytes": list(token)}


def _sse(data: dict[str, Any] | str) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"data: {payload}\n\n".encode()


async def _generate(request: web.Request, parsed: GenerateRequest) -> web.StreamResponse:
    relayed = await relay_if_remote(request, parsed)  # federation: a model a peer serves
    return relayed if relayed is not None else await generate_locally(request, parsed)


async def generate_locally(request: web.Request,
                           parsed: GenerateRequest) -> web.StreamResponse:
    """Answer from a local model (also a request a trusted peer routed here)."""
    service = request.app[SERVICE]
    shape = _Shape(parsed)
    if not parsed.stream:
        result = await service.complete(parsed)
        return json_response(shape.whole(result.text, result.done, result.receipt,
                                         result.logprobs),
                             headers={RECEIPT_HEADER: result.receipt.leaf.hex(),
                                      NODE_HEADER: result.receipt.node.hex()})
    stream = service.stream(parsed)
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "Cache-Control": "no-cache"})
    splitter = CallSplitter(parsed.tools) if parsed.tools is not None else None
    calls: list[ToolCall] = []
    try:
        async with stream:  # errors before the first token still become plain JSON errors
            await response.prepare(request)
            first = True
            async for delta in stream:
                text = delta.text if splitter is None else splitter.push(delta.text)
                if text or first:
                    await response.write(_sse(shape.chunk(text, first=first,
                                                          logprobs=delta.logprobs)))
                    first = False
            if splitter is not None:
                tail, calls = splitter.finish()
                if tail or calls:
                    await response.write(_sse(shape.chunk(tail or None, calls=calls)))
        await _finish_stream(response, shape, parsed, stream, bool(calls))
    except ConnectionError:
        # The client went away: the stream context cancelled the generation and
        # committed the receipt for what was produced; there is nobody to answer.
        return response
    except Exception as exc:
        if not response.prepared:
            raise  # nothing sent yet: the error middleware answers in the OpenAI shape
        # Headers are out: the error travels as the stream's last event.
        error = exc if isinstance(exc, EdgedError) else InternalError("generation failed")
        if not isinstance(exc, EdgedError):
            logger.exception("generation failed mid-stream")
        await response.write(_sse(error.body()))
        await response.write(_sse("[DONE]"))
    return response


async def _finish_stream(response: web.StreamResponse, shape: _Shape, parsed: GenerateRequest,
                         stream: GenerationStream, called: bool) -> None:
    done, receipt = stream.done, stream.receipt
    if done is None or receipt is None:
        raise InternalError("generation ended without a result")
    final = shape.chunk(None, "tool_calls" if called else done.finish_reason)
    if parsed.include_usage:
        await response.write(_sse(final))
        final = {**shape.chunk(None), "choices": [], "usage": _usage(done)}
    await response.write(_sse({**final, "receipt": receipt_ref(receipt)}))
    await response.write(_sse("[DONE]"))
    await response.write_eof()
