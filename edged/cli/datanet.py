"""``edged datanet ...``: HTTP client commands for datanets."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
from rich.progress import Progress

from edged.cli.common import (
    Column,
    call_daemon,
    daemon_client,
    daemon_errors,
    print_json,
    print_table,
)
from edged.cli.progress import progress_bars, progress_option
from edged.datanet_documents import read_document_file
from edged.errors import EdgedError


@click.group()
def datanet() -> None:
    """Contributor corpora that spans/1 attributes outputs to."""


@datanet.command("create")
@click.argument("name")
@click.option("--duplicates", type=click.Choice(["first", "split"]), default="first",
              show_default=True,
              help="credit for spans several contributors hold: the first to index them "
                   "(first) or all holders equally (split)")
@click.pass_context
def datanet_create(ctx: click.Context, name: str, duplicates: str) -> None:
    """Create an empty datanet."""
    call_daemon(ctx, "POST", "/api/datanets", json={"name": name, "duplicates": duplicates})
    click.echo(f"created datanet {name} (duplicates: {duplicates})")


@datanet.command("add")
@click.argument("name")
@click.argument("files", nargs=-1, required=True,
                type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--contributor", required=True, help="contributor id the documents belong to")
@click.option("--payout", help="the contributor's payout address (0x...)")
@progress_option
@click.pass_context
def datanet_add(ctx: click.Context, name: str, files: tuple[Path, ...], contributor: str,
                payout: str | None) -> None:
    """Add FILES (.txt, .md, .jsonl with a text field) of one contributor to NAME."""
    params = {"contributor": contributor, **({"payout": payout} if payout else {})}
    with progress_bars(ctx) as display:
        documents = _read_documents(display, files)
        total = sum(len(text.encode("utf-8")) for _, text in documents)
        uploading = display.add_task("uploading", total=total, unit="bytes")

        def lines() -> Iterator[bytes]:
            for doc_id, text in documents:
                yield json.dumps({"id": doc_id, "text": text}).encode() + b"\n"
                display.advance(uploading, len(text.encode("utf-8")))

        indexing = display.add_task("indexing", total=None, visible=False, unit="documents")

        def follow(progress: dict[str, Any]) -> None:
            """The daemon's progress: its stage, and documents screened or indexed."""
            display.update(indexing, description=progress["stage"], visible=True,
                           completed=progress["documents"]["done"],
                           total=progress["documents"]["total"])

        with daemon_errors(), daemon_client(ctx) as client:
            report = client.request_with_progress(
                "POST", f"/api/datanets/{name}/documents", follow, params=params,
                content=lines(), headers={"Content-Type": "application/x-ndjson"})
    click.echo(f"added {report['documents']} documents ({report['bytes']} bytes) to {name}; "
               f"{report['contributors']} contributors, {report['segments']} segments")
    _echo_duplicates(report["duplicates"])


def _read_documents(display: Progress, files: tuple[Path, ...]) -> list[tuple[str, str]]:
    """Every file's documents, counted off on ``display``."""
    reading = display.add_task("reading", total=len(files), unit="files")
    documents: list[tuple[str, str]] = []
    for path in files:
        try:
            documents += read_document_file(path)
        except EdgedError as exc:
            raise click.ClickException(exc.message) from None
        display.advance(reading)
    return documents


def _echo_duplicates(duplicates: dict[str, Any]) -> None:
    """One line per document others already held (counts and contributor ids only)."""
    if not duplicates["documents"]:
        click.echo("no duplicated content found")
        return
    click.echo(f"{duplicates['documents']} documents hold content already indexed "
               f"({duplicates['held_words']} of {duplicates['words']} words; "
               f"{duplicates['near_duplicates']} near-duplicates):")
    for finding in duplicates["findings"]:
        held_by = ", ".join(f"{who} {words}" for who, words in finding["held_by"].items())
        line = f"  {finding['id']}: {finding['held_words']}/{finding['words']} words held"
        if held_by:
            line += f" ({held_by})"
        if finding["near_duplicate_of"] is not None:
            line += (f"; near-duplicate of {finding['near_duplicate_of']}'s "
                     f"(similarity {finding['similarity_ppm'] / 1e6:.2f})")
        click.echo(line)


@datanet.command("list")
@click.pass_context
def datanet_list(ctx: click.Context) -> None:
    """List datanets."""
    datanets = call_daemon(ctx, "GET", "/api/datanets")["datanets"]
    # Widths as before units joined the cells: 8 + " docs", 12 + " bytes", 5 + " contributors".
    print_table([Column("NAME", "<32"), Column("DOCUMENTS", ">13"), Column("BYTES", ">18"),
                 Column("CONTRIBUTORS", ">18")],
                [(state["name"], f"{state['documents']} docs", f"{state['bytes']} bytes",
                  f"{len(state['contributors'])} contributors") for state in datanets],
                header=False)


@datanet.command("show")
@click.argument("name")
@click.pass_context
def datanet_show(ctx: click.Context, name: str) -> None:
    """Show a datanet's contributors and segments."""
    print_json(call_daemon(ctx, "GET", f"/api/datanets/{name}"))


@datanet.command("rm")
@click.argument("name")
@click.pass_context
def datanet_rm(ctx: click.Context, name: str) -> None:
    """Remove a datanet and its index."""
    call_daemon(ctx, "DELETE", f"/api/datanets/{name}")
    click.echo(f"removed datanet {name}")


@datanet.command("remove-contributor")
@click.argument("name")
@click.argument("contributor")
@click.pass_context
def datanet_remove_contributor(ctx: click.Context, name: str, contributor: str) -> None:
    """Stop crediting CONTRIBUTOR (from the next receipt); documents go at compaction."""
    call_daemon(ctx, "DELETE", f"/api/datanets/{name}/contributors/{contributor}")
    click.echo(f"removed {contributor} from {name}")


@datanet.command("compact")
@click.argument("name")
@click.pass_context
def datanet_compact(ctx: click.Context, name: str) -> None:
    """Merge NAME's segments into one, dropping removed contributors' documents."""
    state = call_daemon(ctx, "POST", f"/api/datanets/{name}/compact")
    click.echo(f"{name}: {state['segments']} segment(s), {state['documents']} documents")
