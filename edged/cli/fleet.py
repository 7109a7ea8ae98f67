"""``edged fleet``: run the fleet manager, and operate it over HTTP."""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import quote

import click

from edged.cli.common import Column, call_daemon, cli_settings, print_json, print_table
from edged.cli.progress import progress_option, spinner
from edged.settings import setting_help


def call_fleet(ctx: click.Context, method: str, path: str, **kwargs: Any) -> Any:
    """One request to the fleet manager (its port, or ``--url``), its JSON answer."""
    return call_daemon(ctx, method, path, fleet=True, **kwargs)


@click.group()
def fleet() -> None:
    """The fleet manager: collect receipts from enrolled nodes, close epochs, settle."""


@fleet.command("serve")
@click.option("--host", help=setting_help()["host"])
@click.option("--port", type=int, help=setting_help()["fleet_port"])
@click.option("--database", help=setting_help()["fleet_database"])
@click.option("--api-key", "api_keys", multiple=True, help="bearer token (repeatable)")
@click.pass_context
def fleet_serve(ctx: click.Context, host: str | None, port: int | None, database: str | None,
                api_keys: tuple[str, ...]) -> None:
    """Run the fleet manager."""
    from edged.fleet.app import create_fleet_app
    from edged.http.serving import run

    settings = cli_settings(ctx, host=host, fleet_port=port, fleet_database=database,
                            api_keys=api_keys or None)
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    click.echo(f"edged fleet manager on http://{settings.host}:{settings.fleet_port}/fleet/ "
               f"(data in {settings.fleet_dir})", err=True)
    run(create_fleet_app(settings), settings.host, settings.fleet_port)


@fleet.command("key")
@click.pass_context
def fleet_key(ctx: click.Context) -> None:
    """Print the fleet's public key (nodes trust it with `edged peers trust KEY`)."""
    click.echo(call_fleet(ctx, "GET", "/fleet/summary")["fleet"])


@fleet.command("nodes")
@click.pass_context
def fleet_nodes(ctx: click.Context) -> None:
    """List enrolled nodes with their last checkpoint and lag."""
    nodes = call_fleet(ctx, "GET", "/fleet/nodes")["nodes"]
    rows = []
    for node in nodes:
        state = "revoked" if node["revoked_ms"] else "frozen" if node["frozen"] else "active"
        lag = "-" if node["lag_ms"] is None else f"{node['lag_ms'] / 1000:.1f}s"
        rows.append((node["node"][:16], node["label"][:16], node["size"], lag, state))
    print_table([Column("NODE", "<18"), Column("LABEL", "<16"), Column("RECEIPTS", ">9"),
                 Column("LAG", ">9"), Column("STATE", gap="  ")], rows)


@fleet.command("enroll")
@click.argument("key")
@click.option("--label", default="", help="a name to show for the node")
@click.pass_context
def fleet_enroll(ctx: click.Context, key: str, label: str) -> None:
    """Enroll the node with public KEY (`edged keys show` on the node prints it)."""
    print_json(call_fleet(ctx, "POST", "/fleet/nodes", json={"node": key, "label": label}))


@fleet.command("revoke")
@click.argument("key")
@click.pass_context
def fleet_revoke(ctx: click.Context, key: str) -> None:
    """Revoke a node: its batches are refused from now on."""
    print_json(call_fleet(ctx, "DELETE", f"/fleet/nodes/{quote(key, safe='')}"))


@fleet.command("epochs")
@click.argument("epoch", type=int, required=False)
@click.option("--close", is_flag=True, help="close a new epoch over everything since the last")
@progress_option
@click.pass_context
def fleet_epochs(ctx: click.Context, epoch: int | None, close: bool) -> None:
    """List epochs, show EPOCH's totals per payee, or --close a new one."""
    if close:
        # The fleet totals a large epoch for seconds without reporting how far it got.
        with spinner(ctx, "closing the epoch"):
            closed = call_fleet(ctx, "POST", "/fleet/epochs")
        print_json(closed)
    elif epoch is not None:
        print_json(call_fleet(ctx, "GET", f"/fleet/epochs/{epoch}"))
    else:
        epochs = call_fleet(ctx, "GET", "/fleet/epochs")["epochs"]
        print_table([Column("EPOCH", ">6"), Column("RECEIPTS", ">9"), Column("TOTAL", ">14"),
                     Column("SETTLEMENT", gap="  ")],
                    [(item["epoch"], item["receipts"], item["total"], item["settlement"])
                     for item in epochs])


@fleet.command("proof")
@click.argument("epoch", type=int)
@click.argument("payee")
@click.pass_context
def fleet_proof(ctx: click.Context, epoch: int, payee: str) -> None:
    """Print PAYEE's claim for EPOCH: amount, leaf index and Merkle proof."""
    print_json(call_fleet(ctx, "GET", f"/fleet/epochs/{epoch}/proof/{quote(payee, safe='')}"))


@fleet.group("payees")
def fleet_payees() -> None:
    """The address each payee id is paid at on the chain."""


@fleet_payees.command("list")
@click.pass_context
def fleet_payees_list(ctx: click.Context) -> None:
    print_json(call_fleet(ctx, "GET", "/fleet/payees")["addresses"])


@fleet_payees.command("set")
@click.argument("payee")
@click.argument("address")
@click.pass_context
def fleet_payees_set(ctx: click.Context, payee: str, address: str) -> None:
    """Pay PAYEE at ADDRESS (0x and 40 hex digits)."""
    print_json(call_fleet(ctx, "PUT", f"/fleet/payees/{quote(payee, safe='')}",
                          json={"address": address}))


@fleet.command("settle")
@click.option("--now", is_flag=True, help="run a settlement pass instead of showing the plan")
@click.pass_context
def fleet_settle(ctx: click.Context, now: bool) -> None:
    """Show what settlement would send (and its status), or settle --now."""
    if now:
        print_json(call_fleet(ctx, "POST", "/fleet/settle"))
    else:
        print_json(call_fleet(ctx, "GET", "/fleet/settlement"))


@fleet.command("deploy-contract")
@click.pass_context
def fleet_deploy(ctx: click.Context) -> None:
    """Deploy the settlement contract from the fleet's account; set chain_contract to it."""
    print_json(call_fleet(ctx, "POST", "/fleet/chain/deploy"))
