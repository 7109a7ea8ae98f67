"""``edged keys ...`` and ``edged config ...``: the node's own keys and settings, as the
daemon reports them."""

from __future__ import annotations

import click

from edged.cli.common import call_daemon, print_json


@click.group()
def keys() -> None:
    """The node's keys."""


@keys.command("show")
@click.pass_context
def keys_show(ctx: click.Context) -> None:
    """Show the node's public key and fingerprint."""
    print_json(call_daemon(ctx, "GET", "/api/node"))


@click.group()
def config() -> None:
    """Settings."""


@config.command("show")
@click.pass_context
def config_show(ctx: click.Context) -> None:
    """Show the settings the daemon runs with (secrets redacted)."""
    print_json(call_daemon(ctx, "GET", "/api/config"))

