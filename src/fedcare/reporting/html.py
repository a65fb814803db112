"""``history.json`` -> one self-contained ``report.html``.

The report is a single file a data scientist can mail to a clinical partner or attach to an
ethics-board submission: figures are embedded PNGs, CSS is inline, and there is no JavaScript
and no network resource (a Content-Security-Policy says so to the browser too). Study, site and
metric names come from users, so every string taken from the history is escaped; the rest of
the markup is fixed text.
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from fedcare.core.files import atomic_write
from fedcare.reporting import figures
from fedcare.reporting import summary as s

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;
 color:#1b1f24;background:#fff;max-width:1120px;margin:0 auto;padding:24px 28px 64px;
 line-height:1.45;font-size:15px}
h1{font-size:26px;margin:0 0 4px}
h2{font-size:19px;margin:36px 0 10px;padding-bottom:4px;border-bottom:2px solid #e4e7eb}
p.lead{font-size:16px;background:#eef5fb;border-left:4px solid #0072B2;padding:10px 14px}
p.note,p.empty{color:#57606a;font-size:13px}
dl.meta{display:grid;grid-template-columns:max-content 1fr max-content 1fr;gap:4px 16px;
 margin:14px 0}
dl.meta dt{color:#57606a}dl.meta dd{margin:0;font-weight:600}
table{border-collapse:collapse;font-size:13.5px;margin:6px 0}
th,td{padding:5px 10px;border-bottom:1px solid #e4e7eb;text-align:left;vertical-align:top}
thead th{background:#f4f6f8;position:sticky;top:0}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
td.best{font-weight:700}
th{white-space:nowrap}th.group{text-align:center;border-left:2px solid #d0d7de}
table.sites td:nth-child(3n+6),table.sites thead tr+tr th:nth-child(3n+1){
 border-left:2px solid #d0d7de}
table.ops{width:100%}
tbody tr:nth-child(even){background:#fafbfc}
tr.failed,tbody tr.failed:nth-child(even){background:#fde8e6}
tr.failed td:first-child{border-left:4px solid #D55E00}
span.fail{color:#a13d00;font-weight:600}
tfoot td{font-weight:600;border-top:2px solid #d0d7de}
.scroll{max-height:520px;overflow:auto;border:1px solid #e4e7eb}
.wide{overflow-x:auto}
figure{margin:14px 0}figure img{max-width:100%;height:auto}
figcaption{color:#57606a;font-size:13px}
details{margin:8px 0}summary{cursor:pointer;font-weight:600}
pre{background:#f6f8fa;padding:12px;overflow:auto;font-size:12.5px;border-radius:4px}
footer{margin-top:40px;color:#8c959f;font-size:12px}
"""
_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def esc(value: Any) -> str:
    """Escape any value from the history (quotes too, so it is safe inside attributes)."""
    return html.escape(str(value), quote=True)


def _table(head: Sequence[str], rows: Iterable[str], foot: str = "", cls: str = "") -> str:
    """A table from pre-escaped header cells and pre-rendered ``<tr>`` rows."""
    header = "".join(head)
    return (f"<div class='wide'><table class='{cls}'><thead><tr>{header}</tr></thead>"
            f"<tbody>{''.join(rows)}</tbody>{foot}</table></div>")


def _num_cells(values: Sequence[float | None], higher_better: bool | None = None) -> str:
    """Right-aligned metric cells; the best one bolded when a direction is given."""
    present = [v for v in values if v is not None]
    best = None
    if higher_better is not None and len(present) > 1:
        best = max(present) if higher_better else min(present)
    return "".join(f"<td class='num{' best' if v is not None and v == best else ''}'>"
                   f"{esc(s.format_value(v))}</td>" for v in values)


def _figure(png: bytes | None, alt: str, caption: str) -> str:
    """An embedded PNG, or a one-line note saying why there is no figure."""
    if png is None:
        return f"<p class='empty'>No data for: {esc(alt)}.</p>"
    data = base64.b64encode(png).decode("ascii")
    return (f"<figure><img src='data:image/png;base64,{data}' alt='{esc(alt)}'>"
            f"<figcaption>{caption}</figcaption></figure>")


def _header(history: Mapping[str, Any]) -> str:
    """Title and the facts a reader needs to know what they are looking at."""
    primary = s.primary_metric(history)
    direction = "higher" if s.higher_is_better(history, primary) else "lower"
    done = len(s.rounds(history))
    planned = history.get("rounds_planned")
    timing = s.mapping(history.get("timing"))
    facts = [("Created", history.get("created", "—")), ("Task", history.get("task", "—")),
             ("Model", history.get("model", "—")), ("Strategy", history.get("strategy", "—")),
             ("Rounds", f"{done} of {planned}" if planned is not None else done),
             ("Sites", len(s.site_names(history))),
             ("Primary metric", f"{primary} ({direction} is better)"),
             ("Total time", f"{s.format_value(timing.get('total_seconds'), 3)} s"),
             ("fedcare version", history.get("fedcare_version", "—"))]
    items = "".join(f"<dt>{name}</dt><dd>{esc(value)}</dd>" for name, value in facts)
    study = esc(history.get("study", "unnamed study"))
    return f"<header><h1>Federated study report: {study}</h1><dl class='meta'>{items}</dl></header>"


def _headline(history: Mapping[str, Any]) -> str:
    """Final metrics of the three ways to train, and the one sentence that sums them up."""
    rows = s.headline_rows(history)
    if not rows:
        return "<h2>Headline</h2><p class='empty'>No evaluation metrics were recorded.</p>"
    final = s.final_block(history)
    body = []
    for row in rows:
        values = [row.federated, s.mean_over_sites(final, row.metric), row.local, row.centralized]
        arrow = "↑" if row.higher_is_better else "↓"
        body.append(f"<tr><th>{esc(row.metric)} {arrow}</th>"
                    f"{_num_cells(values, row.higher_is_better)}"
                    f"{_num_cells([s.trivial_value(final, row.metric)])}</tr>")
    no_dp = _baseline_label(history)
    head = ["<th>metric</th>", "<th class='num'>federated (global)</th>",
            "<th class='num'>federated (mean over sites)</th>",
            f"<th class='num'>local-only (mean over sites){no_dp}</th>",
            f"<th class='num'>centralized (global){no_dp}</th>",
            "<th class='num'>trivial (constant prediction)</th>"]
    sentence = s.headline_sentence(history)
    lead = f"<p class='lead'>{esc(sentence)}</p>" if sentence else (
        "<p class='empty'>No baselines were run, so there is nothing to compare against.</p>")
    note = ("<p class='note'>“Global” is the example-weighted mean over the sites' test sets; "
            "“mean over sites” weights every site equally. ↑/↓: higher/lower is better; the best "
            "value per row is bold. Local-only: each site trains alone. Centralized: all "
            "training data pooled (not possible in practice; an upper reference). Trivial: the "
            "best constant prediction on each site's own test rows (its majority class, AUC "
            "0.5, its prevalence as the probability, its mean), weighted like “global”: a model "
            "is only useful where it beats this.")
    if no_dp:
        note += (" The baselines were trained without differential privacy: they are "
                 "reference points, never released, and site-level DP means nothing for one "
                 "site alone; the gap to them is the cost of federation and privacy together.")
    return f"<h2>Headline</h2>{lead}{_table(head, body)}{note}</p>"


def _baseline_label(history: Mapping[str, Any]) -> str:
    """' — no DP, reference only' when the run's baselines say they trained without DP."""
    notes = {str(s.baseline(history, b).get("note") or "") for b in s.BASELINES}
    notes.discard("")
    return "".join(f"<br><span class='fail'>{esc(n)}</span>" for n in sorted(notes))


def _convergence(history: Mapping[str, Any]) -> str:
    caption = ("Global metrics of the federated model after each round, on the sites' test sets "
               "(rounds without evaluation are skipped). Dashed: baselines, example-weighted like "
               "the curve.")
    return (f"<h2>Convergence</h2>"
            f"{_figure(figures.convergence_png(history), 'convergence per round', caption)}")


def _site_table(history: Mapping[str, Any]) -> str:
    """Per-site rows, final metrics, and the same site's local-only and centralized metrics."""
    metrics = s.metric_names(history)
    info = s.site_info(history)
    blocks = [s.site_metrics(s.final_block(history)),
              s.site_metrics(s.baseline(history, "local")),
              s.site_metrics(s.baseline(history, "centralized"))]
    primary = s.primary_metric(history)
    top = ("<th rowspan='2'>site</th><th rowspan='2' class='num'>train rows</th>"
           "<th rowspan='2' class='num'>test rows</th>"
           "<th rowspan='2' class='num'>prevalence</th>"
           f"<th rowspan='2' class='num'>trivial {esc(primary)}</th>"
           + "".join(f"<th colspan='3' class='group'>{esc(m)}</th>" for m in metrics))
    sub = "<th class='num'>fed.</th><th class='num'>local</th><th class='num'>central.</th>"
    rows = []
    final = s.final_block(history)
    own = s.site_metrics(final)
    for site in s.site_names(history):
        declared = info.get(site, {})
        cells = "".join(_num_cells([s.as_float(b.get(site, {}).get(m)) for b in blocks],
                                   s.higher_is_better(history, m)) for m in metrics)
        rows.append(f"<tr><td>{esc(site)}</td>"
                    f"<td class='num'>{esc(declared.get('train_rows', '—'))}</td>"
                    f"<td class='num'>{esc(declared.get('test_rows', '—'))}</td>"
                    f"<td class='num'>{esc(s.prevalence_text(own.get(site, {})))}</td>"
                    f"{_num_cells([s.trivial_value(final, primary, site)])}{cells}</tr>")
    if not rows:
        return "<p class='empty'>No sites recorded.</p>"
    splits = [f"{esc(site)}: {esc(info[site]['test_split'])}" for site in s.site_names(history)
              if info.get(site, {}).get("test_split")]
    note = f"<p class='note'>Test rows: {'; '.join(splits)}.</p>" if splits else ""
    return (f"<div class='wide'><table class='sites'><thead><tr>{top}</tr>"
            f"<tr>{sub * len(metrics)}</tr>"
            f"</thead><tbody>{''.join(rows)}</tbody></table></div>{note}")


def _sites(history: Mapping[str, Any]) -> str:
    primary = esc(s.primary_metric(history))
    bars = _figure(figures.site_bars_png(history), "final metric per site",
                   f"Final {primary} of each way of training, on each site's own test set.")
    curves = _figure(figures.site_curves_png(history), "per-site metric per round",
                     f"Each site's {primary} of the global model after each round, "
                     "on its own test set.")
    note = ("<p class='note'>Prevalence: the share of the positive class (class shares for "
            "several classes) in each site's test rows, computed at the site. Trivial: the best "
            f"constant prediction's {primary} on the same rows.</p>")
    return f"<h2>Per site</h2>{bars}{curves}{_site_table(history)}{_joined(history)}{note}"


def _joined(history: Mapping[str, Any]) -> str:
    """'Did joining help?': each site's federated model against its own local-only model."""
    found = s.site_comparisons(history)
    if not found:
        return ""
    metric = esc(s.primary_metric(history))
    items = "".join(f"<li><b>{esc(c.site)}</b>: {esc(c.text)}</li>" for c in found)
    return (f"<h3>Did joining help? (each site's {metric} on its own test rows)</h3>"
            f"<ul class='joined'>{items}</ul>")


def _training(history: Mapping[str, Any]) -> str:
    caption = ("Loss each site reported for its local training in that round "
               "(on its own training data, before aggregation).")
    return (f"<h2>Local training</h2>"
            f"{_figure(figures.train_loss_png(history), 'training loss per site', caption)}")


def _failures(failed: Mapping[str, Any]) -> str:
    return "<br>".join(f"<span class='fail'>⚠ {esc(site)}</span>: {esc(reason)}"
                       for site, reason in failed.items())


def _operation_row(record: Mapping[str, Any]) -> str:
    """One round: timings, traffic, and which sites dropped out and why."""
    failed = s.mapping(record.get("sites_failed"))
    sampled = record.get("sites_sampled") or []
    completed = record.get("sites_completed") or []
    seconds = [record.get(k) for k in ("seconds", "train_seconds", "aggregate_seconds")]
    return (f"<tr{' class=failed' if failed else ''}><td class='num'>{esc(record.get('round'))}"
            f"</td>{''.join(f'<td class=num>{esc(s.format_value(v, 3))}</td>' for v in seconds)}"
            f"<td class='num'>{esc(s.human_bytes(record.get('bytes_down')))}</td>"
            f"<td class='num'>{esc(s.human_bytes(record.get('bytes_up')))}</td>"
            f"<td class='num'>{len(completed)} / {len(sampled)}</td>"
            f"<td>{_failures(failed) or '—'}</td></tr>")


def _operations(history: Mapping[str, Any]) -> str:
    """Per-round cost and reliability: what a site's IT department will ask about."""
    records = s.rounds(history)
    if not records:
        return "<h2>Operations</h2><p class='empty'>No rounds were run.</p>"
    head = ["<th class='num'>round</th>", "<th class='num'>time (s)</th>",
            "<th class='num'>training (s)</th>", "<th class='num'>aggregation (s)</th>",
            "<th class='num'>bytes down</th>", "<th class='num'>bytes up</th>",
            "<th class='num'>sites completed</th>", "<th>failures</th>"]
    n_failed = sum(len(s.mapping(r.get("sites_failed"))) for r in records)

    def column(key: str, fmt: Callable[[float], str]) -> str:
        return f"<td class='num'>{esc(fmt(s.total(r.get(key) for r in records)))}</td>"

    foot = (f"<tfoot><tr><td>total</td>{column('seconds', lambda v: s.format_value(v, 3))}"
            f"{column('train_seconds', lambda v: s.format_value(v, 3))}"
            f"{column('aggregate_seconds', lambda v: s.format_value(v, 3))}"
            f"{column('bytes_down', s.human_bytes)}{column('bytes_up', s.human_bytes)}"
            f"<td></td><td>{n_failed} site failure(s)</td></tr></tfoot>")
    table = _table(head, map(_operation_row, records), foot, cls="ops")
    return f"<h2>Operations</h2><div class='scroll'>{table}</div>"


def _json_details(title: str, value: Any, summary_text: str) -> str:
    """A collapsible, pretty-printed JSON block (closed by default: it is for reference)."""
    if not value:
        return f"<h2>{title}</h2><p class='empty'>Not recorded.</p>"
    text = json.dumps(value, indent=2, sort_keys=False, default=str, ensure_ascii=False)
    return (f"<h2>{title}</h2><details><summary>{summary_text}</summary>"
            f"<pre>{esc(text)}</pre></details>")


def _privacy(history: Mapping[str, Any]) -> str:
    """What the study's privacy protection guarantees, in the numbers an auditor checks."""
    cfg = history.get("config") or {}
    secure = (cfg.get("secure_aggregation") or {}).get("protocol", "none")
    p = history.get("privacy")
    lines = []
    if secure != "none":
        lines.append(f"<p>Secure aggregation: <b>{esc(secure)}</b> - the hub received only the "
                     "sum of each round's site updates, never one site's update.</p>")
    if not p:
        if not lines:
            return ""
        return "<h2>Privacy</h2>" + "".join(lines) + (
            "<p>No differential privacy: the released model carries no epsilon guarantee.</p>")
    eps = p.get("epsilon")
    lines.append(f"<p>Differential privacy: <b>{esc(p.get('mechanism'))}</b> "
                 f"({esc(p.get('unit', ''))}), accountant {esc(p.get('accountant'))}, delta "
                 f"{esc(p.get('delta'))}: <b>epsilon = {esc(s.format_value(eps, 3) if not isinstance(eps, str) else eps)}</b>"  # noqa: E501
                 " for the released model.</p>")
    rows = p.get("rounds")
    if rows:
        body = "".join(f"<tr><td class='num'>{r['round']}</td>"
                       f"<td class='num'>{esc(s.format_value(r['sample_rate'], 3))}</td>"
                       f"<td class='num'>{r['steps']}</td>"
                       f"<td class='num'>{esc(s.format_value(r['epsilon_round'], 3))}</td>"
                       f"<td class='num'>{esc(s.format_value(r['epsilon_cumulative'], 3))}</td>"
                       "</tr>" for r in rows if not isinstance(r["epsilon_round"], str))
        lines.append(_table(["<th class='num'>round</th>", "<th class='num'>sample rate</th>",
                             "<th class='num'>steps</th>", "<th class='num'>epsilon (round)</th>",
                             "<th class='num'>epsilon (cumulative)</th>"], [body], ""))
    for site, rep in sorted((p.get("sites") or {}).items()):
        lines.append(f"<p>{esc(site)}: epsilon {esc(s.format_value(rep.get('epsilon'), 3))} "
                     f"(noise multiplier {esc(s.format_value(rep.get('noise_multiplier'), 3))})"
                     "</p>")
    return "<h2>Privacy</h2>" + "".join(lines)


def _data_quality(history: Mapping[str, Any]) -> str:
    """The hub's comparison of the sites' quality reports, made before training."""
    q = history.get("data_quality")
    if not q:
        return ""
    items = [f"<li><b>{esc(site)}</b> refused: {esc(str(why))}</li>"
             for site, why in (q.get("refusing") or {}).items()]
    seen: set[str] = set()
    for f in (q.get("comparison") or {}).get("findings", []):
        if f["message"] not in seen:
            seen.add(f["message"])
            items.append(f"<li>{esc(f['kind'])}: {esc(f['message'])}</li>")
    body = "<ul>" + "".join(items) + "</ul>" if items else "<p>No findings.</p>"
    return (f"<h2>Data quality across sites</h2><p>{len(q.get('reports', {}))} sites sent "
            "small-cell-suppressed quality reports; the hub compared them before training."
            f"</p>{body}")


def _feature_importance(history: Mapping[str, Any], top: int = 15) -> str:
    """A tree model's features by their share of the total split gain (XGBoost's
    ``total_gain``), with how often each splits and the hessian cover of those splits."""
    imp = history.get("feature_importance")
    if not imp or not imp.get("features"):
        return ""
    rows = imp["features"][:top]
    body = "".join(f"<tr><td>{esc(r['feature'])}</td>"
                   f"<td class='num'>{100 * float(r['gain_share']):.1f} %</td>"
                   f"<td class='num'>{int(r['splits'])}</td>"
                   f"<td class='num'>{esc(s.format_value(r['total_cover'], 1))}</td></tr>"
                   for r in rows)
    more = len(imp["features"]) - len(rows)
    foot = (f"<tfoot><tr><td colspan='4'>{more} more feature(s) in history.json</td></tr>"
            "</tfoot>" if more > 0 else "")
    return (f"<h2>Feature importance</h2><p>Over the {int(imp.get('trees', 0))} trees: each "
            "feature's share of the total gain of the splits on it.</p>"
            + _table(["<th>feature</th>", "<th class='num'>gain share</th>",
                      "<th class='num'>splits</th>", "<th class='num'>cover</th>"],
                     [body], foot))


def render_report(history: Mapping[str, Any], extra_html: Sequence[str] = ()) -> str:
    """The complete HTML document for one run's history."""
    study = esc(history.get("study", "unnamed study"))
    sections = [_header(history), _headline(history), _convergence(history), _sites(history),
                _training(history), _operations(history)]
    sections += [x for x in (_feature_importance(history), _privacy(history),
                             _data_quality(history)) if x]
    sections += list(extra_html)
    sections.append(_json_details("Configuration", history.get("config"),
                                  "Full study configuration (JSON)"))
    version = esc(history.get("fedcare_version", "?"))
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<meta http-equiv='Content-Security-Policy' content=\"{_CSP}\">"
            "<meta name='viewport' content='width=device-width,initial-scale=1'>"
            f"<title>fedcare report: {study}</title><style>{_CSS}</style></head><body>"
            + "\n".join(sections)
            + f"<footer>Generated by fedcare {version}.</footer></body></html>\n")


def write_report(history: Mapping[str, Any], path: Path) -> None:
    """Render and write atomically: a reader never sees a half-written report. Privacy-audit
    fragments written beside it (``audit/privacy-*.html`` by ``fedcare audit privacy``) are
    included."""
    path = Path(path)
    fragments = [f.read_text(encoding="utf-8")
                 for f in sorted((path.parent / "audit").glob("privacy-*.html"))]
    atomic_write(path, render_report(history, fragments).encode("utf-8"))
