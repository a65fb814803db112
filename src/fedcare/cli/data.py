"""``fedcare data``: check a site's data against a study's data contract, at the site."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from fedcare.cli.errors import fail
from fedcare.core.errors import FedcareError

app = typer.Typer(help="Site data: check it against a data contract.", no_args_is_help=True,
                  add_completion=False)
console = Console()


@app.callback()
def _group() -> None:
    """Site data: check it against a data contract."""


@app.command()
def check(
    contract: Annotated[Path, typer.Option("--contract", "-c", help="Data contract (.toml).")],
    data: Annotated[Path, typer.Option("--data", "-d", help="Site source file (.toml): "
                                       "format csv|omop|fhir, paths, mapping.")],
    out: Annotated[Path | None, typer.Option("--out", help="Write the report as JSON.")] = None,
    html: Annotated[Path | None, typer.Option("--html", help="Write the report as HTML.")]
    = None,
    min_cell: Annotated[int, typer.Option(min=1, help="Suppress every count below this "
                                          "(at least 1).")] = 10,
) -> None:
    """Build the contract's features from this site's data and report their quality.

    The report (counts only, small counts suppressed) is safe to share with the hub. Exits 2
    and lists the violations when the data does not meet the contract's minimum quality.
    """
    from fedcare.core.files import atomic_write
    from fedcare.data.adapters.source import load_source
    from fedcare.data.contract import contract_hash, load_contract
    from fedcare.data.features import build_features
    from fedcare.data.quality import quality_report, render_html, to_json

    try:
        c = load_contract(contract)
        src = load_source(data)
        records = src.load()
        table = build_features(c, records, site_mapping=src.site_mapping(),
                               index_date=src.index_date)
        report = quality_report(c, table, min_cell=min_cell, site=src.site)
    except FedcareError as exc:
        raise fail(exc) from None
    if out is not None:
        atomic_write(out, to_json(report).encode())
    if html is not None:
        atomic_write(html, render_html(report).encode())
    console.print(f"contract [bold]{escape(c.name)}[/bold] v{escape(c.version)} "
                  f"(hash {contract_hash(c)[:16]}), site [bold]{escape(src.site)}[/bold]: "
                  f"{report['cohort_rows']} cohort rows")
    if report["violations"]:
        console.print("[bold red]fails minimum quality:[/bold red]")
        for v in report["violations"]:
            console.print(f"  - {escape(v)}")
        raise typer.Exit(2)
    console.print("[green]passes minimum quality[/green]")
