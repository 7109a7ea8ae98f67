"""Typed keys for what the application holds (no module globals elsewhere)."""

from __future__ import annotations

import asyncio

from aiohttp import web

from edged.datanets import DatanetStore
from edged.examples import InfluenceBindings
from edged.exchange import ExchangeService, SyncEndpoint
from edged.federation import Federation
from edged.inference import InferenceService
from edged.keys import NodeKeys
from edged.ledger import Ledger
from edged.peers import PeerStore
from edged.predict import PredictService
from edged.scheduler import Scheduler
from edged.settings import Settings
from sync.auth import RequestVerifier

SETTINGS = web.AppKey("settings", Settings)
SERVICE = web.AppKey("service", InferenceService)
LEDGER = web.AppKey("ledger", Ledger)
SCHEDULER = web.AppKey("scheduler", Scheduler)
NODE_KEYS = web.AppKey("node_keys", NodeKeys)
READY = web.AppKey("ready", asyncio.Event)
DATANETS = web.AppKey("datanets", DatanetStore)
PEERS = web.AppKey("peers", PeerStore)
EXCHANGE = web.AppKey("exchange", ExchangeService)
SYNC_ENDPOINT = web.AppKey("sync_endpoint", SyncEndpoint)
REQUEST_VERIFIER = web.AppKey("request_verifier", RequestVerifier)
PREDICT = web.AppKey("predict", PredictService)
BINDINGS = web.AppKey("bindings", InfluenceBindings)
FEDERATION = web.AppKey("federation", Federation)
