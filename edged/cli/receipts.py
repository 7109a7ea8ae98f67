"""``edged receipts ...`` and ``edged verify``: list, show, verify, audit and prove the
daemon's receipts, and check a proof bundle offline."""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path
from typing import Any

import click

from edged.cli.common import Column, call_daemon, print_json, print_table


@click.group()
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


@click.command("verify")
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

