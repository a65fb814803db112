"""``fedcare export``: take a study's results out of the federation through the hub's
airlock (thin over :class:`fedcare.client.HubClient`; the rules are the hub's).

A researcher requests a file (``request``), the hub checks it (small cells refuse a table; a
model without DP is flagged), the participating sites' stewards ``approve`` or ``reject``,
and the requester ``download`` s exactly the bytes that were approved."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from fedcare.cli.errors import fail
from fedcare.cli.network import CaFile, Federation, HubUrl, TokenFile, _client
from fedcare.core.errors import FedcareError
from fedcare.hub.schemas import ExportInfo

app = typer.Typer(name="export", no_args_is_help=True, add_completion=False,
                  help="Take a study's results (model, tables, report) out of the federation "
                       "through the airlock: request, stewards' approval, download.")
console = Console()

Why = Annotated[str, typer.Option("--why", help="The reason, kept with the request and in "
                                                "the audit trail.")]


def show(info: ExportInfo) -> None:
    """One request: its file and digest, the checks' findings and the decisions."""
    colour = {"approved": "green", "downloaded": "green", "awaiting_stewards": "yellow"}.get(
        info.status, "red")
    console.print(f"export [bold]{info.id}[/bold]: {escape(info.artifact)} of study "
                  f"{info.study_id} ({info.kind}, {info.bytes} B, sha256 {info.digest})")
    console.print(f"  requested by {escape(info.requester)} at {info.created}: "
                  f"{escape(info.reason)}")
    console.print(f"  status [{colour}]{info.status}[/{colour}]; {info.approvals} of "
                  f"{info.quorum} approvals needed from {', '.join(info.sites)}; small-cell "
                  f"threshold {info.min_cell}")
    for why in info.refusals:
        console.print(f"  [red]refused:[/red] {escape(why)}")
    for flag in info.flags:
        console.print(f"  [yellow]flag:[/yellow] {escape(flag)}")
    for d in info.decisions:
        verb = "[green]approved[/green]" if d.approve else "[red]rejected[/red]"
        console.print(f"  {d.at} {escape(d.site)} ({escape(d.user)}) {verb}"
                      + (f": {escape(d.reason)}" if d.reason else ""))
    if info.missing:
        console.print(f"  missing: {escape(info.missing)}")


@app.command("request")
def request(study_id: str, artifact: Annotated[str, typer.Argument(
                help="The study's file: model.safetensors, history.json, report.html, "
                     "registry.json, model.xgb.json, or a .csv/.json results table.")],
            why: Why, federation: Federation = None, hub: HubUrl = None, ca: CaFile = None,
            token_file: TokenFile = None) -> None:
    """Ask to export one of your study's files; prints what the automatic checks found."""
    client = _client(federation, hub, ca, token_file)
    try:
        info = client.request_export(study_id, artifact, why)
    except FedcareError as exc:
        raise fail(exc, 2) from None
    show(info)
    if info.status == "refused_by_checks":
        raise typer.Exit(1)


@app.command("list")
def list_(federation: Federation = None, hub: HubUrl = None, ca: CaFile = None,
          token_file: TokenFile = None) -> None:
    """The export requests you may see."""
    client = _client(federation, hub, ca, token_file)
    try:
        rows = client.exports()
    except FedcareError as exc:
        raise fail(exc, 2) from None
    table = Table("id", "study", "file", "requester", "status", "approvals", "created")
    for r in rows:
        table.add_row(r.id, r.study_id, escape(r.artifact), escape(r.requester), r.status,
                      f"{r.approvals}/{r.quorum}", r.created)
    console.print(table)


@app.command("show")
def show_cmd(export_id: str, federation: Federation = None, hub: HubUrl = None,
             ca: CaFile = None, token_file: TokenFile = None) -> None:
    """One export request: checks, flags, decisions, and what it still lacks."""
    client = _client(federation, hub, ca, token_file)
    try:
        show(client.export(export_id))
    except FedcareError as exc:
        raise fail(exc, 2) from None


def _decide(export_id: str, approve: bool, why: str, federation: Path | None,
            hub: str | None, ca: Path | None, token_file: Path | None) -> None:
    client = _client(federation, hub, ca, token_file)
    try:
        show(client.decide_export(export_id, approve=approve, reason=why))
    except FedcareError as exc:
        raise fail(exc, 2) from None


@app.command("approve")
def approve(export_id: str, why: Why, federation: Federation = None, hub: HubUrl = None,
            ca: CaFile = None, token_file: TokenFile = None) -> None:
    """Approve an export for your site (site stewards; once per site, final)."""
    _decide(export_id, True, why, federation, hub, ca, token_file)


@app.command("reject")
def reject(export_id: str, why: Why, federation: Federation = None, hub: HubUrl = None,
           ca: CaFile = None, token_file: TokenFile = None) -> None:
    """Reject an export for your site (site stewards; one rejection refuses it for good)."""
    _decide(export_id, False, why, federation, hub, ca, token_file)


@app.command("download")
def download(export_id: str, out: Annotated[Path, typer.Option(help="File to write.")],
             federation: Federation = None, hub: HubUrl = None, ca: CaFile = None,
             token_file: TokenFile = None) -> None:
    """Write an approved export (yours) to OUT, checked against the approved SHA-256."""
    from fedcare.core.files import atomic_write

    client = _client(federation, hub, ca, token_file)
    try:
        data, digest = client.download_export(export_id)
    except FedcareError as exc:
        raise fail(exc, 2) from None
    atomic_write(out, data)
    console.print(f"wrote {out} ({len(data)} B, sha256 {digest})")
