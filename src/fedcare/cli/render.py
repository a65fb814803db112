"""Terminal rendering of a finished run: a per-site table against the baselines."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.console import Console
from rich.table import Table


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.4f}"


ALL = "ALL (weighted)"


def _metric(block: Mapping[str, Any], site: str, metric: str) -> float | None:
    """A site's metric from a result block, or the weighted global one for the ALL row."""
    src = block.get("global_metrics") if site == ALL else block.get("site_metrics", {}).get(site)
    return (src or {}).get(metric)


def results_table(history: Mapping[str, Any]) -> Table:
    """Per-site final metrics of the federated model next to local-only and pooled training."""
    primary = history.get("primary_metric", "accuracy")
    final = history.get("final", {})
    base = history.get("baselines", {})
    local = base.get("local", {})
    central = base.get("centralized", {})
    metrics = [primary] + [m for m in ("auc", "loss", "mae") if m != primary]
    present = [m for m in metrics if m in final.get("global_metrics", {})]
    table = Table(title=f"{history.get('study', 'study')}: final test metrics "
                        f"({history.get('strategy', '')}, {len(history.get('rounds', []))} rounds)")
    table.add_column("site")
    table.add_column("train rows", justify="right")
    table.add_column("test rows", justify="right")
    for m in present:
        table.add_column(f"federated {m}", justify="right", style="bold")
        if local:
            table.add_column(f"local-only {m}", justify="right")
        if central:
            table.add_column(f"pooled {m}", justify="right")
    rows = [(s["name"], str(s["train_rows"]), str(s["test_rows"]))
            for s in history.get("sites", [])]
    for name, ntr, nte in [*rows, (ALL, "", "")]:
        cells = [name, ntr, nte]
        for m in present:
            cells.append(_fmt(_metric(final, name, m)))
            if local:
                cells.append(_fmt(_metric(local, name, m)))
            if central:
                cells.append(_fmt(_metric(central, name, m)))
        table.add_row(*cells, end_section=name == rows[-1][0] if rows else False)
    return table


def print_results(history: Mapping[str, Any], console: Console) -> None:
    console.print(results_table(history))
    failed = {r["round"]: r["sites_failed"] for r in history.get("rounds", [])
              if r.get("sites_failed")}
    if failed:
        console.print(f"[yellow]Rounds with failed sites:[/yellow] {failed}")
    timing = history.get("timing", {})
    if timing:
        console.print(f"Total {timing.get('total_seconds', 0):.1f} s, "
                      f"{timing.get('mean_round_seconds', 0) * 1000:.1f} ms per round "
                      f"({history.get('workers', 1)} worker process(es)).")
