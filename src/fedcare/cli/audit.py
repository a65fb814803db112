"""``fedcare audit``: empirical privacy checks of a finished study (thin over the
membership-inference attacks in :mod:`fedcare.attacks.membership`)."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from fedcare.cli.errors import fail
from fedcare.core.errors import FedcareError

app = typer.Typer(name="audit", help="Audit a finished study (membership inference).",
                  no_args_is_help=True, add_completion=False, rich_markup_mode="rich")
console = Console()


@app.callback()
def _group() -> None:
    """Audit a finished study (membership inference)."""


class Attack(StrEnum):
    loss = "loss"
    lira = "lira"


@app.command()
def privacy(
    run: Annotated[Path, typer.Option("--run", help="Run folder written by `fedcare simulate "
                                                    "--out`.")],
    site: Annotated[str | None, typer.Option(help="Audit one site's rows (default: all).")]
    = None,
    attack: Annotated[Attack, typer.Option(help="loss (Yeom et al. 2018) or lira (Carlini et "
                                                "al. 2022, shadow models).")] = Attack.loss,
    shadows: Annotated[int, typer.Option(help="LiRA: number of shadow models.")] = 8,
    offline: Annotated[bool, typer.Option(help="LiRA: offline variant (OUT shadows only).")]
    = False,
    epochs: Annotated[int | None, typer.Option(
        help="LiRA: shadow training epochs (default: rounds x local_epochs).")] = None,
    seed: Annotated[int, typer.Option(help="Seed for the shadows' data halves.")] = 0,
    site_data: Annotated[Path | None, typer.Option(
        help="Networked study: this site's own table (CSV/Parquet), with --site.")] = None,
) -> None:
    """Membership inference against the run's final model: can an attacker tell training rows
    from held-out rows? Writes audit/privacy-ATTACK-SITE.json, .png and .html in the run."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from fedcare.attacks.membership import AuditSettings, audit_run
    from fedcare.attacks.membership.figure import describe_privacy

    try:
        settings = AuditSettings(attack=attack.value, shadows=shadows, online=not offline,
                                 epochs=epochs, seed=seed, site=site, site_data=site_data)
        if attack is Attack.lira:
            with Progress("[bold]shadow models", BarColumn(), MofNCompleteColumn(),
                          TimeElapsedColumn(), console=console) as bar:
                task = bar.add_task("shadows", total=shadows)
                result = audit_run(run, settings, progress=lambda done, _total: bar.update(
                    task, completed=done))
        else:
            result = audit_run(run, settings)
    except FedcareError as exc:  # missing/invalid run folder, unknown site: exit 2
        raise fail(exc) from None
    table = Table(title=escape(f"Membership inference: {result.attack} ({result.variant}) on "
                               f"{result.site}"))
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("members / non-members", f"{result.members} / {result.non_members}")
    table.add_row("ROC AUC (0.5 = chance)", f"{result.auc:.3f}")
    for fpr, tpr in result.tpr_at_fpr.items():
        table.add_row(f"TPR at FPR {float(fpr):.1%}", f"{tpr:.3f}")
    table.add_row("study privacy", escape(describe_privacy(result.privacy)))
    console.print(table)
    if result.non_members < 1000:
        console.print(f"[dim]{result.non_members} non-members: FPRs below "
                      f"{1 / result.non_members:.2%} cannot be resolved.[/dim]")
    console.print(f"Wrote [bold]{escape(str(Path(run) / 'audit'))}[/bold]")
    history_file = Path(run) / "history.json"
    if history_file.is_file():  # re-render the run's report with the audit in it
        import json

        from fedcare.reporting import write_report

        write_report(json.loads(history_file.read_text()), Path(run) / "report.html")
        console.print(f"Updated [bold]{escape(str(Path(run) / 'report.html'))}[/bold]")
