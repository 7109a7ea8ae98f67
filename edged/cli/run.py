"""``edged run``: stream a model's answer from the daemon, then summarise its receipt."""

from __future__ import annotations

from typing import Any

import click

from edged.cli.client import DaemonError
from edged.cli.common import daemon_client, daemon_errors

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


@click.command()
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

