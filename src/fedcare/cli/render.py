"""Terminal rendering of a finished run: a per-site table against the baselines."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from fedcare.hub.schemas import DatasetQuality, SiteInfo, StudyStatus, StudySummary
from fedcare.reporting import summary


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


ALL = "all sites"


def _metric(block: Mapping[str, Any], site: str, metric: str) -> float | None:
    """A site's metric from a result block, or the weighted global one for the ALL row."""
    src = block.get("global_metrics") if site == ALL else block.get("site_metrics", {}).get(site)
    return (src or {}).get(metric)


def results_table(history: Mapping[str, Any]) -> Table:
    """Per-site final metrics of the federated model next to local-only and pooled training.

    Kept to the primary metric and AUC so it fits an 80-column terminal; report.html has all.
    The primary metric is followed by the trivial (constant) prediction's score, and each site
    by its prevalence, so a high accuracy on a rare outcome cannot look good.
    """
    primary = summary.primary_metric(history)
    final = history.get("final", {})
    base = history.get("baselines", {})
    blocks = [("fed", final), ("local", base.get("local")), ("pooled", base.get("centralized"))]
    blocks = [(label, b) for label, b in blocks if b]
    metrics = [m for m in dict.fromkeys([primary, "auc"]) if m in final.get("global_metrics", {})]
    trivial = summary.TRIVIAL + primary
    has_trivial = trivial in final.get("global_metrics", {})
    no_dp = any((b or {}).get("note") for _, b in blocks[1:])
    table = Table(title=f"{history.get('study', 'study')}: test metrics after "
                        f"{len(history.get('rounds', []))} rounds of {history.get('strategy', '')}"
                        " (fed = federated, local = site alone, pooled = all data together"
                        + ("; local and pooled: no DP — reference only" if no_dp else "")
                        + (f"; trivial = best constant prediction's {primary}" if has_trivial
                           else "") + ")")
    names = [str(s["name"]) for s in history.get("sites", [])]
    table.add_column("site", no_wrap=True, min_width=max([4, *(len(n) for n in names)]))
    table.add_column("train/test", justify="right")
    has_prevalence = "prevalence" in final.get("global_metrics", {})
    if has_prevalence:
        table.add_column("prev.", justify="right")
    for m in metrics:
        for label, _ in blocks:
            table.add_column(f"{m}\n{label}", justify="right",
                             style="bold" if label == "fed" else None)
        if m == primary and has_trivial:
            table.add_column(f"{m}\ntrivial", justify="right", style="dim")
    sites = [(s["name"], f"{s.get('train_rows') or '?'}/{s.get('test_rows') or '?'}")
             for s in history.get("sites", [])]
    for i, (name, rows) in enumerate([*sites, (ALL, "")]):
        cells = [name, rows]
        if has_prevalence:
            p = _metric(final, name, "prevalence")
            cells.append("—" if p is None else f"{p * 100:.1f}%")
        for m in metrics:
            cells.extend(_fmt(_metric(b, name, m)) for _, b in blocks)
            if m == primary and has_trivial:
                cells.append(_fmt(_metric(final, name, trivial)))
        table.add_row(*cells, end_section=i == len(sites) - 1)
    return table


#: How each privacy mode is named in the console summary.
_DP_MODES = {"dp_sgd": "record-level DP-SGD",
             "dp_fedavg_central": "site-level DP-FedAvg, noise added by the hub",
             "dp_fedavg_distributed": "site-level DP-FedAvg, noise added by the sites"}


def privacy_line(history: Mapping[str, Any]) -> str:
    """What protected the run, in one line: the differential privacy spent (epsilon at delta,
    after the last round) and the secure aggregation used, or that there was none."""
    config = history.get("config") or {}
    privacy = config.get("privacy") or {}
    mode = privacy.get("mode", "none")
    protocol = (config.get("secure_aggregation") or {}).get("protocol", "none")
    if mode == "none":
        dp = "no differential privacy"
    else:
        eps = next((r.get("epsilon") for r in reversed(history.get("rounds", []))
                    if r.get("epsilon") is not None), None)
        shown = f"{eps:.3g}" if isinstance(eps, (int, float)) else str(eps)
        dp = (f"{_DP_MODES.get(mode, mode)}: epsilon = {shown} at delta = "
              f"{privacy.get('delta')} ({privacy.get('accountant', 'pld')} accountant)")
    secure = ("no secure aggregation (the hub sees each site's update)" if protocol == "none"
              else f"secure aggregation: {protocol} (the hub sees only the sum)")
    return f"Privacy: {dp}; {secure}."


def print_results(history: Mapping[str, Any], console: Console) -> None:
    console.print(results_table(history))
    sentence = summary.headline_sentence(history)
    if sentence:
        console.print(sentence, markup=False, highlight=False)
    console.print(privacy_line(history), markup=False, highlight=False)
    failed = {r["round"]: r["sites_failed"] for r in history.get("rounds", [])
              if r.get("sites_failed")}
    if failed:
        console.print(f"[yellow]Rounds with failed sites:[/yellow] {failed}")
    timing = history.get("timing", {})
    if timing:
        workers = history.get("workers")  # None: a networked study (its sites' own machines)
        console.print(f"Total {timing.get('total_seconds', 0):.1f} s, "
                      f"{timing.get('mean_round_seconds', 0) * 1000:.1f} ms per round"
                      + (f" ({workers} worker process(es))." if workers else "."))


def rounds_table(status: StudyStatus) -> Table:
    """A networked study's rounds (``fedcare study status``): per round, the global and each
    site's primary metric, the sites that answered, the time and the cumulative epsilon."""
    primary, sites, rounds = status.primary_metric, status.sites, status.rounds
    has_eps = any(r.epsilon is not None for r in rounds)
    table = Table(title=f"{primary} per round (all = the federation's test rows; "
                        "— = not evaluated that round)")
    for name in ("round", "sites", "seconds"):
        table.add_column(name, justify="right")
    if has_eps:
        table.add_column("epsilon", justify="right")
    table.add_column(f"{primary}\nall", justify="right", style="bold")
    for site in sites:
        table.add_column(escape(site), justify="right")
    for r in rounds:
        failed = r.sites_failed
        cells = [str(r.round), f"{len(r.sites_completed)}"
                 + (f" ({len(failed)} failed)" if failed else ""), f"{r.seconds:.2f}"]
        if has_eps:
            eps = r.epsilon
            cells.append("—" if eps is None else eps if isinstance(eps, str) else f"{eps:.3g}")
        cells.append(_fmt(r.metric(None, primary)))
        cells.extend(_fmt(r.metric(site, primary)) for site in sites)
        table.add_row(*cells)
    return table


def approvals_table(status: StudyStatus) -> Table:
    """Each site's decision on a study (``fedcare study status``), undecided sites too."""
    table = Table(title=f"site approvals (content hash {status.config_hash[:16]}...)")
    for name in ("site", "decision", "when", "reason"):
        table.add_column(name)
    got = {a.site: a for a in status.approvals}
    for site in status.sites:
        a = got.get(site)
        if a is None:
            table.add_row(escape(site), "[yellow]undecided[/yellow]", "", "")
            continue
        colour = "green" if a.decision == "approved" else "red"
        table.add_row(escape(site), f"[{colour}]{a.decision}[/{colour}]", a.time,
                      escape(a.reason or ""))
    return table


def studies_table(studies: Sequence[StudySummary]) -> Table:
    """``fedcare study list``: every study the hub holds, oldest first."""
    table = Table(title="studies")
    for name in ("id", "name", "status", "round", "created"):
        table.add_column(name, no_wrap=name == "id")
    for st in studies:
        table.add_row(escape(st.study_id), escape(st.name), st.status,
                      f"{st.current_round}/{st.rounds_planned}", st.created)
    return table


def sites_table(sites: Sequence[SiteInfo]) -> Table:
    """``fedcare sites``: the sites the hub knows, whether their node is online now, and the
    datasets each declared (rows)."""
    table = Table(title="sites (online = its node polled the hub within the last minute)")
    for name in ("site", "online", "last seen", "version", "datasets (rows)"):
        table.add_column(name)
    for s in sites:
        datasets = ", ".join(escape(f"{d.name} ({d.rows})") for d in s.datasets)
        online = "[green]yes[/green]" if s.online else "[red]no[/red]"
        table.add_row(escape(s.name), online, s.last_seen, escape(s.version or "—"),
                      datasets or "—")
    return table


def _share(positive: Any, negative: Any) -> str:
    """The label rate from a report's published counts ('—' when a count is suppressed)."""
    ints = all(isinstance(v, int) and not isinstance(v, bool) for v in (positive, negative))
    return f"{positive / (positive + negative):.1%}" if ints and positive + negative else "—"


def quality_table(quality: DatasetQuality) -> Table:
    """The sites' quality reports for one dataset, side by side: cohort rows, label counts
    and rate (a label-definition mismatch shows here first), and whether the site passes
    the contract's minimum quality. Suppressed cells stay suppressed ("<10")."""
    table = Table(title=f"dataset {escape(quality.dataset)}: the sites' quality reports")
    for col in ("site", "cohort rows", "label: positive", "negative", "label rate", "quality"):
        table.add_column(col, justify="left" if col in ("site", "quality") else "right")
    for site, report in sorted(quality.reports.items()):
        if "error" in report:
            table.add_row(escape(site), "—", "—", "—", "—", f"[red]{escape(report['error'])}")
            continue
        label = report.get("label") or {}
        pos, neg = label.get("positive"), label.get("negative")
        ok = report.get("passes")
        table.add_row(escape(site), escape(str(report.get("cohort_rows", "—"))),
                      escape(str(pos if pos is not None else "—")),
                      escape(str(neg if neg is not None else "—")), _share(pos, neg),
                      "[green]passes" if ok else "[red]fails" if ok is False else "—")
    return table
