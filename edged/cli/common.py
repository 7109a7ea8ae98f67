"""What the client commands share: settings, the daemon client, output."""

from __future__ import annotations

import json
import os
from typing import Any

import click

from edged.cli.client import DaemonClient, DaemonError
from edged.errors import EdgedError
from edged.settings import Settings, load_settings


def cli_settings(ctx: click.Context, **flags: Any) -> Settings:
    root = ctx.find_root().params
    try:
        return load_settings(environ=os.environ, config_file=root.get("config"),
                             flags={"data_dir": root.get("data_dir"), **flags})
    except EdgedError as exc:
        raise click.ClickException(exc.message) from None


def daemon_client(ctx: click.Context) -> DaemonClient:
    return DaemonClient.from_settings(cli_settings(ctx), url=ctx.find_root().params.get("url"))


def call_daemon(ctx: click.Context, method: str, path: str, **kwargs: Any) -> Any:
    try:
        with daemon_client(ctx) as client:
            return client.request(method, path, **kwargs)
    except DaemonError as exc:
        raise click.ClickException(str(exc)) from None


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True))
