"""``fedcare data``: check a site's data against a study's data contract, and build the
harmonized table, at the site."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape

from fedcare.cli.errors import fail
from fedcare.core.errors import FedcareError

if TYPE_CHECKING:
    from fedcare.data.clinical import ClinicalTable

app = typer.Typer(help="Site data: check it against a data contract, build its table.",
                  no_args_is_help=True, add_completion=False)
console = Console()

ContractOpt = Annotated[Path, typer.Option("--contract", "-c", help="Data contract (.toml).")]
DataOpt = Annotated[Path, typer.Option("--data", "-d", help=(
    "Site source file (.toml): format csv|omop|fhir, paths, mapping "
    "(`fedcare config-reference --file source`)."))]


@app.callback()
def _group() -> None:
    """Site data: check it against a data contract, build its table."""


def _build(contract: Path, data: Path, min_cell: int = 10) -> ClinicalTable:
    from fedcare.data.clinical import build_clinical_table

    try:
        return build_clinical_table(data, contract, min_cell=min_cell)
    except FedcareError as exc:
        raise fail(exc) from None


def _summary(built: ClinicalTable) -> None:
    """What both commands print: the contract (with the full hash a study names), the cohort
    and label counts as the shareable report shows them, and the quality verdict."""
    report = built.report
    c = report.get("contract", {})
    console.print(f"contract [bold]{escape(str(c.get('name', '')))}[/bold] "
                  f"v{escape(str(c.get('version', '')))}, site "
                  f"[bold]{escape(built.site)}[/bold]: {report['cohort_rows']} cohort rows")
    label = report.get("label") or {}
    if isinstance(label, dict) and "positive" in label:
        console.print(f"label {escape(str(label.get('name', '')))}: "
                      f"{label['positive']} positive, {label.get('negative')} negative")
    # On its own line, whole: a study's data.contract_hash needs all 64 digits (or a prefix).
    console.print("contract hash (data.contract_hash):", soft_wrap=True)
    console.print(built.contract_hash, soft_wrap=True, highlight=False)


def _verdict(built: ClinicalTable) -> bool:
    if built.violations:
        console.print("[bold red]fails minimum quality:[/bold red]")
        for v in built.violations:
            console.print(f"  - {escape(v)}")
        return False
    console.print("[green]passes minimum quality[/green]")
    return True


@app.command()
def check(
    contract: ContractOpt,
    data: DataOpt,
    out: Annotated[Path | None, typer.Option("--out", help="Write the report as JSON.")] = None,
    html: Annotated[Path | None, typer.Option("--html", help="Write the report as HTML.")]
    = None,
    min_cell: Annotated[int, typer.Option(min=1, help="Suppress every count below this "
                                          "(at least 1).")] = 10,
) -> None:
    """Build the contract's features from this site's data and report their quality.

    The report (counts only, small counts suppressed) is safe to share with the hub. Prints
    the contract's full hash (what a study's data.contract_hash names). Exits 2 and lists the
    violations when the data does not meet the contract's minimum quality.
    """
    from fedcare.core.files import atomic_write
    from fedcare.data.quality import render_html, to_json

    built = _build(contract, data, min_cell)
    if out is not None:
        atomic_write(out, to_json(built.report).encode())
    if html is not None:
        atomic_write(html, render_html(built.report).encode())
    _summary(built)
    if not _verdict(built):
        raise typer.Exit(2)


@app.command()
def build(
    contract: ContractOpt,
    data: DataOpt,
    out: Annotated[Path, typer.Option("--out", "-o", help=(
        "Where to write the table (.parquet); readable by you only."))],
    force: Annotated[bool, typer.Option(
        "--force", help="Write the table even when it fails the contract's quality rules.")]
    = False,
) -> None:
    """Write this site's harmonized table (one row per cohort member: person_id, the
    contract's features, the label) as Parquet, for the site's own analyses.

    The same table a node trains on and `fedcare simulate` builds for data.source =
    "clinical". It holds patient-level rows: the file is created owner-only (mode 600) and is
    meant to stay at the site. Exits 2 without writing when the contract's quality rules
    fail, unless --force.
    """
    from fedcare.data.clinical import write_table

    built = _build(contract, data)
    _summary(built)
    passed = _verdict(built)
    if not passed and not force:
        console.print("nothing written (use --force to write the table anyway)")
        raise typer.Exit(2)
    try:
        write_table(built, out)
    except FedcareError as exc:
        raise fail(exc) from None
    console.print(f"wrote [bold]{escape(str(out))}[/bold]: {built.rows} rows x "
                  f"{len(built.features)} features + label {escape(built.table.label)} "
                  "(owner-only; keep it at the site)")
