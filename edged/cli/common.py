"""What the client commands share: settings, the daemon client, its one error path, output."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NamedTuple

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


def daemon_client(ctx: click.Context, *, fleet: bool = False) -> DaemonClient:
    """A client of the node's daemon, or with ``fleet`` of the fleet manager (its port);
    ``--url`` overrides either."""
    settings = cli_settings(ctx)
    if fleet:
        settings = dataclasses.replace(settings, port=settings.fleet_port)
    return DaemonClient.from_settings(settings, url=ctx.find_root().params.get("url"))


@contextmanager
def daemon_errors() -> Iterator[None]:
    """The CLI's one way to report a failed daemon call: a ``DaemonError`` raised inside
    becomes click's ``Error: <message>`` on stderr and exit status 1."""
    try:
        yield
    except DaemonError as exc:
        raise click.ClickException(exc.message) from None


def call_daemon(ctx: click.Context, method: str, path: str, *, fleet: bool = False,
                **kwargs: Any) -> Any:
    """One request to the daemon (``fleet``: to the fleet manager), its JSON answer."""
    with daemon_errors(), daemon_client(ctx, fleet=fleet) as client:
        return client.request(method, path, **kwargs)


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True))


class Column(NamedTuple):
    """A table column: ``spec`` is a format spec (``"<32"``, ``">9"``; ``""`` leaves the
    cell unpadded), ``gap`` what separates it from the column before it."""

    header: str
    spec: str = ""
    gap: str = " "


def print_table(columns: Sequence[Column], rows: Iterable[Sequence[Any]], *,
                header: bool = True) -> None:
    """Print ``rows`` one line each, every cell formatted by its column; first the
    columns' headers unless ``header`` is false."""

    def line(cells: Sequence[Any]) -> str:
        return "".join((column.gap if index else "") + format(cell, column.spec)
                       for index, (column, cell) in enumerate(zip(columns, cells, strict=True)))

    if header:
        click.echo(line([column.header for column in columns]))
    for row in rows:
        click.echo(line(row))
