"""``edged peers ...`` and ``edged sync ...``: the trusted peers and the receipt exchange
with them; HTTP client commands of the daemon."""

from __future__ import annotations

import click

from edged.cli.common import call_daemon


@click.group(invoke_without_command=True)
@click.pass_context
def peers(ctx: click.Context) -> None:
    """Known peers and their trust (no subcommand: list them)."""
    if ctx.invoked_subcommand is None:
        listing = call_daemon(ctx, "GET", "/api/peers")
        for peer in listing["trusted"]:
            click.echo(f"{peer['fingerprint']}  trusted  {peer['label'] or '-':<20} {peer['key']}")
        status = call_daemon(ctx, "GET", "/api/sync/status")
        for peer in status["peers"]:
            state = "ok" if peer["last_ok"] else (peer["last_error"] or "not yet synced")
            click.echo(f"{'address':<16}  {state:<16} {peer['url']} "
                       f"({peer['received']} received)")
        for origin in status["origins"]:
            frozen = "  FROZEN (equivocation)" if origin["frozen"] else ""
            click.echo(f"{origin['origin'][:16]}  holds {origin['held']} receipts{frozen}")
        if not listing["trusted"] and not status["peers"]:
            click.echo("no peers")


@peers.command("trust")
@click.argument("key")
@click.option("--label", default="", help="a name for this peer")
@click.pass_context
def peers_trust(ctx: click.Context, key: str, label: str) -> None:
    """Enrol a peer's node key (from its `edged keys show`) for sync."""
    peer = call_daemon(ctx, "POST", "/api/peers/trust", json={"key": key, "label": label})
    click.echo(f"trusted {peer['fingerprint']}")


@peers.command("untrust")
@click.argument("key")
@click.pass_context
def peers_untrust(ctx: click.Context, key: str) -> None:
    """Remove a peer's key from the trusted set."""
    call_daemon(ctx, "DELETE", f"/api/peers/trust/{key}")
    click.echo(f"untrusted {key[:16]}")


@click.group()
def sync() -> None:
    """Receipt exchange with trusted peers."""


@sync.command("now")
@click.pass_context
def sync_now(ctx: click.Context) -> None:
    """Run a sync round with every known peer now."""
    results = call_daemon(ctx, "POST", "/api/sync/now")["peers"]
    for url, result in sorted(results.items()):
        click.echo(f"{url}: {result}")
    if not results:
        click.echo("no peers to sync with")

