"""``edged models ...`` and ``edged ps``: install, change, bind, list, show and remove
models, and show the loaded ones; HTTP client commands of the daemon."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
from rich.progress import Progress

from edged.cli.client import DaemonClient
from edged.cli.common import (
    Column,
    call_daemon,
    daemon_client,
    daemon_errors,
    print_json,
    print_table,
)
from edged.cli.progress import advancer, progress_bars, progress_option


@click.group()
def models() -> None:
    """Install, list, show and remove models."""


def _parse_options(pairs: tuple[str, ...]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        try:
            if not sep or not key:
                raise ValueError
            options[key.strip()] = json.loads(raw)
        except ValueError:
            raise click.BadParameter(f"{pair!r}: use KEY=VALUE with a JSON value",
                                     param_hint="--option") from None
    return options


@models.command("add")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--name", required=True)
@click.option("--owner", help="payee id of the model owner")
@click.option("--price", "prices", multiple=True, metavar="KEY=N",
              help="base units: request=N, input_per_1k=N, output_per_1k=N (repeatable)")
@click.option("--chat-format", type=click.Choice(["gemma", "chatml", "none"]),
              help="needed when the GGUF has no chat template; none: completions only")
@click.option("--context-length", type=int)
@click.option("--runtime", default="llama.cpp", show_default=True)
@click.option("--datanet", "datanets", multiple=True, help="datanet to attribute to (repeatable)")
@click.option("--data-share", type=click.FloatRange(0, 1),
              help="share of each fee owed to datanet contributors, 0..1")
@click.option("--replace", is_flag=True, help="replace a model of the same name")
@click.option("--tokenizer", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="ONNX text embedders: the model's Hugging Face tokenizer.json")
@click.option("--embedding-output", metavar="NAME",
              help="ONNX text embedders: the graph output to pool (default: the first)")
@click.option("--option", "options", multiple=True, metavar="KEY=VALUE",
              help="llama.cpp option, VALUE in JSON: parallel=8, n_gpu_layers=-1, "
                   "flash_attn=true (repeatable)")
@progress_option
@click.pass_context
def models_add(ctx: click.Context, path: Path, name: str, owner: str | None,
               prices: tuple[str, ...], chat_format: str | None, context_length: int | None,
               runtime: str, datanets: tuple[str, ...], data_share: float | None,
               replace: bool, tokenizer: Path | None, embedding_output: str | None,
               options: tuple[str, ...]) -> None:
    """Upload the weights at PATH and register them as NAME."""
    price = _parse_prices(prices)
    with daemon_errors(), daemon_client(ctx) as client, progress_bars(ctx) as display:
        click.echo(f"uploading {path.name} ...", err=True)
        digest = _upload_blob(client, display, path)
        body: dict[str, Any] = {
            "name": name, "weights": digest, "owner": owner, "price": price,
            "chat_format": chat_format, "context_length": context_length,
            "runtime": runtime, "replace": replace, "datanets": list(datanets),
            "data_share_ppm": _ppm(data_share), "options": _parse_options(options)}
        if tokenizer is not None:
            click.echo(f"uploading {tokenizer.name} ...", err=True)
            body["tokenizer"] = _upload_blob(client, display, tokenizer)
        if embedding_output is not None:
            body["embedding_output"] = embedding_output
        created = client.request("POST", "/api/models", json=body)
    print_json(created)


def _upload_blob(client: DaemonClient, display: Progress, path: Path) -> str:
    """Upload a blob with byte progress for its hashing and (when the daemon lacks it)
    its upload; return its digest."""
    size = path.stat().st_size
    return client.upload_blob(path, hashed=advancer(display, f"hashing {path.name}", size),
                              sent=advancer(display, f"uploading {path.name}", size))


def _parse_prices(prices: tuple[str, ...]) -> dict[str, int]:
    price: dict[str, int] = {}
    for item in prices:
        key, _, value = item.partition("=")
        if not (value.isascii() and value.isdigit()):
            raise click.BadParameter(f"{item!r} is not KEY=N", param_hint="--price")
        price[key.strip()] = int(value)
    return price


def _ppm(share: float | None) -> int | None:
    return None if share is None else round(share * 1_000_000)


@models.command("update")
@click.argument("name")
@click.option("--owner", help="payee id of the model owner")
@click.option("--price", "prices", multiple=True, metavar="KEY=N", help="as for models add")
@click.option("--datanet", "datanets", multiple=True,
              help="datanets to attribute to (replaces the list; repeatable)")
@click.option("--no-datanets", is_flag=True, help="attribute to no datanet (owner/1)")
@click.option("--data-share", type=click.FloatRange(0, 1), help="0..1")
@click.option("--unmatched-data-to", type=click.Choice(["owner", "operator"]),
              help="who gets the data share when no span matches")
@click.option("--influence-layer", metavar="FEATURES,WEIGHTS,BIAS",
              help="ONNX: graph input and initializers of the final linear layer")
@click.option("--max-batch-size", type=int, help="ONNX: dynamic batching, rows per run")
@click.option("--batch-delay-us", type=int, help="ONNX: dynamic batching window")
@click.option("--option", "options", multiple=True, metavar="KEY=VALUE",
              help="llama.cpp option, VALUE in JSON (replaces the model's options; "
                   "repeatable); the model reloads")
@click.option("--gpu-layers", metavar="N|auto",
              help="llama.cpp: layers to offload to a GPU (auto: all that fit; -1: all; "
                   "0: none); kept with the model's other options; the model reloads")
@click.option("--base", metavar="DIGEST",
              help="lineage: sha256 of the base model's weights this model derives from")
@click.option("--trained-on", "trained_on", multiple=True, metavar="DATANET[@DIGEST]",
              help="lineage: a training datanet, pinned at DIGEST or else at the local "
                   "datanet's current state digest (repeatable; replaces the list)")
@click.option("--card", metavar="FILE|TEXT",
              help="lineage: the model card, from FILE if it exists, else TEXT")
@click.option("--no-lineage", is_flag=True, help="clear the lineage (before the options above)")
@click.pass_context
def models_update(ctx: click.Context, name: str, owner: str | None, prices: tuple[str, ...],
                  datanets: tuple[str, ...], no_datanets: bool, data_share: float | None,
                  unmatched_data_to: str | None, influence_layer: str | None,
                  max_batch_size: int | None, batch_delay_us: int | None,
                  options: tuple[str, ...], gpu_layers: str | None, base: str | None,
                  trained_on: tuple[str, ...], card: str | None, no_lineage: bool) -> None:
    """Change a model's owner, price, datanets, data share, batching or lineage."""
    changes: dict[str, Any] = {"owner": owner, "data_share_ppm": _ppm(data_share),
                               "unmatched_data_to": unmatched_data_to,
                               "max_batch_size": max_batch_size,
                               "batch_delay_us": batch_delay_us}
    if influence_layer:
        parts = influence_layer.split(",")
        if len(parts) != 3:
            raise click.BadParameter("FEATURES,WEIGHTS,BIAS", param_hint="--influence-layer")
        changes["influence_layer"] = dict(zip(("features", "weights", "bias"), parts,
                                              strict=True))
    if prices:
        changes["price"] = _parse_prices(prices)
    if datanets or no_datanets:
        changes["datanets"] = list(datanets)
    if options:
        changes["options"] = _parse_options(options)
    if gpu_layers is not None:
        count = gpu_layers.lstrip("-")
        if gpu_layers != "auto" and not (count.isascii() and count.isdigit()):
            raise click.BadParameter("a count of layers, -1 or auto", param_hint="--gpu-layers")
        current = changes.get("options")
        if current is None:
            current = call_daemon(ctx, "GET", f"/api/models/{name}").get("options") or {}
        changes["options"] = {**current,
                              "n_gpu_layers": gpu_layers if gpu_layers == "auto" else
                              int(gpu_layers)}
    if no_lineage or base is not None or trained_on or card is not None:
        changes["lineage"] = _lineage(ctx, name, base, trained_on, card, keep=not no_lineage)
    changes = {key: value for key, value in changes.items() if value is not None}
    print_json(call_daemon(ctx, "PATCH", f"/api/models/{name}", json=changes))


def _lineage(ctx: click.Context, name: str, base: str | None, trained_on: tuple[str, ...],
             card: str | None, *, keep: bool) -> dict[str, Any]:
    """The model's lineage (``keep``: as it is now) with the parts given replaced. A
    ``--trained-on`` without ``@DIGEST`` is pinned by the daemon at the datanet's state."""
    lineage: dict[str, Any] = {}
    if keep:
        lineage = dict(call_daemon(ctx, "GET", f"/api/models/{name}").get("lineage") or {})
    if base is not None:
        lineage["base"] = base
    if trained_on:
        lineage["trained_on"] = []
        for item in trained_on:
            datanet, _, digest = item.partition("@")
            lineage["trained_on"].append({"datanet": datanet, **({"state": digest}
                                                                  if digest else {})})
    if card is not None:
        lineage["card"] = _card_text(card)
    return lineage


def _card_text(card: str) -> str:
    """The contents of the file ``card`` names, or ``card`` itself when it names none."""
    try:
        is_file = Path(card).is_file()
    except (OSError, ValueError):  # a long text or one with NUL is no file name
        is_file = False
    if not is_file:
        return card
    try:
        return Path(card).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        raise click.BadParameter(f"cannot read {card!r} as UTF-8 text",
                                 param_hint="--card") from None


@models.command("bind")
@click.argument("name")
@click.argument("examples", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--method", type=click.Choice(["influence", "knn"]), default="influence",
              show_default=True,
              help="influence: through the model's final linear layer (refused without "
                   "one); knn: opt in to knn/1, which measured near-random fidelity")
@progress_option
@click.pass_context
def models_bind(ctx: click.Context, name: str, examples: Path, method: str) -> None:
    """Bind contributor examples (.npz: features, labels, contributors; or .csv:
    contributor,label,f1,...) to an ONNX model for influence/1 attribution."""
    kind = "csv" if examples.suffix.lower() == ".csv" else "npz"
    with daemon_errors(), daemon_client(ctx) as client, progress_bars(ctx) as display:
        sent = advancer(display, f"uploading {examples.name}", examples.stat().st_size)
        result = client.send_file("PUT", f"/api/models/{name}/examples", examples,
                                  sent=sent, params={"format": kind, "method": method})
    click.echo(f"bound {result['examples']} examples of {result['contributors']} contributors "
               f"to {name} ({result['method']})")
    _echo_binding(result, err=False)


def _echo_binding(binding: dict[str, Any], *, err: bool) -> None:
    """The layer a binding uses (on stderr when ``err``), and knn/1's fidelity warning
    (always on stderr)."""
    layer = binding.get("layer")
    if layer:
        click.echo(f"layer: {layer['features']} -> {layer['weights']}, {layer['bias']} "
                   f"({layer['source']})", err=err)
    if binding.get("warning"):
        click.echo(f"warning: {binding['warning']}", err=True)


@models.command("list")
@click.pass_context
def models_list(ctx: click.Context) -> None:
    """List installed models and whether they are loaded."""
    installed = call_daemon(ctx, "GET", "/api/models")["models"]
    print_table([Column("NAME", "<32"), Column("RUNTIME", "<10"), Column("SIZE", ">12"),
                 Column("STATE", gap="  ")],
                [(model["name"], model["runtime"], f"{model['size'] / 1e6:.1f} MB",
                  "loaded" if model["loaded"] else "-") for model in installed],
                header=False)



@models.command("show")
@click.argument("name")
@click.pass_context
def models_show(ctx: click.Context, name: str) -> None:
    """Show a model's manifest (JSON on stdout), with its examples binding's attribution
    method and layer, and its lineage; warnings go to stderr."""
    model = call_daemon(ctx, "GET", f"/api/models/{name}")
    print_json(model)
    binding = model.get("binding")
    if binding:
        click.echo(f"attribution: {binding['method']}", err=True)
        _echo_binding(binding, err=True)
    lineage = model.get("lineage") or {}
    if "base" in lineage:
        click.echo(f"lineage: base model sha256:{lineage['base']}", err=True)
    for entry in lineage.get("trained_on", []):
        click.echo(f"lineage: trained on datanet {entry['datanet']} at state "
                   f"{entry['state']}", err=True)
    if "card" in lineage:
        click.echo(f"lineage: model card of {len(lineage['card'])} characters", err=True)


@models.command("rm")
@click.argument("name")
@click.pass_context
def models_rm(ctx: click.Context, name: str) -> None:
    """Remove a model (and its weights unless another model uses them)."""
    call_daemon(ctx, "DELETE", f"/api/models/{name}")
    click.echo(f"removed {name}")


@click.command("ps")
@click.pass_context
def ps(ctx: click.Context) -> None:
    """Show the loaded models: size, where they run, slots busy, and until when."""
    import time

    rows = []
    for model in call_daemon(ctx, "GET", "/api/models")["models"]:
        if not model["loaded"]:
            continue
        slots = model.get("slots") or {"busy": 0, "total": 0, "queued": 0}
        busy = f"{slots['busy']}/{slots['total']}" + (
            f"+{slots['queued']}" if slots["queued"] else "")
        expires = model.get("expires_at")
        until = "forever" if expires is None else (
            "now" if expires <= time.time() else f"{expires - time.time():.0f} s")
        processor = model.get("processor") or ", ".join(model.get("providers") or []) or "-"
        gpu = "-"
        if model.get("gpu_layers"):
            gpu = f"{model['gpu_layers']}/{model['layers']} layers " \
                  f"{(model.get('device_memory_bytes') or 0) / 1e6:.0f} MB"
        rows.append((model["name"], f"{model['memory_bytes'] / 1e6:.1f} MB", processor, gpu,
                     busy, until))
    print_table([Column("NAME", "<28"), Column("SIZE", ">10"),
                 Column("PROCESSOR", "<22", gap="  "), Column("GPU", "<18"),
                 Column("SLOTS", "<9"), Column("UNTIL")], rows)

