"""Fixtures for in-process API tests: a real app on the fake runtime in a temp data dir."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import openai
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from edged.app import create_app
from edged.devtools.tiny_gguf import install_tiny_llama
from edged.manifest import RUNTIMES, Manifest
from edged.models import ModelStore
from edged.settings import Settings, load_settings
from runtimes import Backend, ModelSpec
from runtimes.fake import FakeBackend
from tests.support.loop_watchdog import loop_watchdog, pytest_runtest_call  # noqa: F401

# Every aiohttp test server started under tests/edged arms the event-loop watchdog
# (tests/support/loop_watchdog.py): a trip round the loop blocked for more than 50 ms
# fails the test, naming the code that blocked. Exempt a test whose subject is blocking
# with @pytest.mark.allow_loop_blocking(reason="...").

AppClientFactory = Callable[..., Awaitable[TestClient[Any, web.Application]]]
FAKE_MODEL = "fake-model"


def make_settings(data_dir: Path, **overrides: Any) -> Settings:
    settings = load_settings(environ={"HOME": str(data_dir)},
                             flags={"data_dir": data_dir, "install_demo_model": False})
    return dataclasses.replace(settings, **overrides).validate()


def install_fake_model(data_dir: Path, name: str = FAKE_MODEL, *, context_length: int = 256,
                       **manifest_fields: Any) -> Manifest:
    """A model of the fake runtime: a placeholder blob plus a manifest."""
    store = ModelStore(data_dir / "models", runtimes=RUNTIMES)
    content = f"fake weights for {name}".encode()
    digest = hashlib.sha256(content).hexdigest()
    if not store.has_blob(digest):
        with store.blob_writer(digest) as handle:
            handle.write(content)
    manifest = Manifest(name=name, runtime="fake", weights=digest, size=0,
                        owner=manifest_fields.pop("owner", "model-owner"),
                        context_length=context_length, **manifest_fields)
    return store.add(manifest)


def fake_loader(**options: Any) -> Callable[[str, ModelSpec], Backend]:
    """A loader that builds fake backends with ``options`` (token_delay, ...)."""

    def load(runtime: str, spec: ModelSpec) -> Backend:
        assert runtime == "fake"
        return FakeBackend.load(dataclasses.replace(spec, options={**spec.options, **options}))

    return load


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    path = tmp_path / "data"
    install_fake_model(path)
    return path


@pytest.fixture
def settings(data_dir: Path) -> Settings:
    return make_settings(data_dir)


@pytest.fixture
async def client(aiohttp_client: AppClientFactory,
                 settings: Settings) -> TestClient[Any, web.Application]:
    return await aiohttp_client(create_app(settings, runtimes=RUNTIMES, loader=fake_loader()))


TinyServed = tuple[TestClient[Any, web.Application], openai.AsyncOpenAI]


@contextlib.asynccontextmanager
async def serving_tiny(aiohttp_client: AppClientFactory, tmp_path: Path, model_file: Path,
                       context_length: int = 256) -> AsyncIterator[TinyServed]:
    """A node serving a tiny GGUF as ``tiny`` (chatml; the manifest's context length),
    and the official ``openai`` client on it."""
    data_dir = tmp_path / "data"
    install_tiny_llama(data_dir, model_file, chat_format="chatml",
                       context_length=context_length)
    client = await aiohttp_client(create_app(make_settings(data_dir), runtimes=("llama.cpp",)))
    # Made off the loop: the client loads the system's CA certificates (tens of ms).
    official = await asyncio.to_thread(openai.AsyncOpenAI, base_url=str(client.make_url(
        "/v1")), api_key="unused", max_retries=0)
    try:
        yield client, official
    finally:
        await official.close()


@pytest.fixture
async def tiny_served(aiohttp_client: AppClientFactory, tmp_path: Path,
                      tiny_model_file: Path) -> AsyncIterator[TinyServed]:
    async with serving_tiny(aiohttp_client, tmp_path, tiny_model_file) as served:
        yield served
