"""Pure reading of a ``history.json`` mapping: which numbers the report shows, and how.

Kept free of matplotlib and HTML so the comparisons a reader relies on (federation vs
local-only, gap to pooled) are plain functions that can be unit-tested on tiny dicts. Every
accessor tolerates missing or empty fields, because a history can come from a run that never
evaluated per round, had no test data, or skipped the baselines.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

Metrics = Mapping[str, Any]

# Metrics that are errors or losses: smaller is better. Anything else is taken as a score.
_LOWER_IS_BETTER = frozenset({"loss", "mse", "rmse", "mae", "mape", "brier", "log_loss",
                              "logloss", "error", "train_loss", "ece"})
# Scores in [0, 1] whose differences read naturally as percentage points.
_UNIT_INTERVAL = frozenset({"accuracy", "balanced_accuracy", "auc", "roc_auc", "pr_auc",
                            "f1", "precision", "recall", "sensitivity", "specificity",
                            "brier", "r2"})
BASELINES = ("centralized", "local")
#: Evaluation keys that describe the test rows rather than score the model: the trivial
#: (best constant) prediction's scores, the prevalence and class shares. The report shows them
#: beside the model's scores, never as metrics of their own.
TRIVIAL = "trivial_"
_CONTEXT_PREFIXES = (TRIVIAL, "prevalence", "class_share_")


def is_context_metric(name: str) -> bool:
    """True for trivial-prediction scores, prevalence and class shares."""
    return name.startswith(_CONTEXT_PREFIXES)


def mapping(value: Any) -> Mapping[str, Any]:
    """``value`` if it is a mapping, else empty: a malformed field must not crash the report."""
    return value if isinstance(value, Mapping) else {}


def as_float(value: Any) -> float | None:
    """A finite float, or None for absent, non-numeric or non-finite values."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def primary_metric(history: Mapping[str, Any]) -> str:
    """The metric the study optimises; falls back to the first metric the run reported."""
    named = history.get("primary_metric")
    if isinstance(named, str) and named:
        return named
    names = metric_names(history, primary="")
    return names[0] if names else "loss"


def higher_is_better(history: Mapping[str, Any], metric: str) -> bool:
    """Direction of ``metric``: the history says it for the primary metric, names tell the rest."""
    if metric == history.get("primary_metric") and isinstance(history.get("higher_is_better"),
                                                              bool):
        return bool(history["higher_is_better"])
    return metric.lower() not in _LOWER_IS_BETTER


def final_block(history: Mapping[str, Any]) -> Mapping[str, Any]:
    """Final evaluation; a run without one falls back to its last evaluated round."""
    final = mapping(history.get("final"))
    if mapping(final.get("global_metrics")) or mapping(final.get("site_metrics")):
        return final
    for record in reversed(rounds(history)):
        if mapping(record.get("global_metrics")) or mapping(record.get("site_metrics")):
            return record
    return {}


def baseline(history: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    """One baseline block (``local`` or ``centralized``), empty when the run skipped it."""
    return mapping(mapping(history.get("baselines")).get(name))


def rounds(history: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """Round records in order, dropping anything that is not a record."""
    raw = history.get("rounds")
    if not isinstance(raw, list):
        return []
    return [r for r in raw if isinstance(r, Mapping)]


def site_metrics(block: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """``site -> metrics`` of one evaluation block, keyed by string site name."""
    return {str(site): mapping(m) for site, m in mapping(block.get("site_metrics")).items()}


def metric_names(history: Mapping[str, Any], primary: str | None = None) -> list[str]:
    """Every evaluation metric the run reported, primary first, then loss, then alphabetical."""
    blocks = [final_block(history), mapping(history.get("initial"))]
    blocks += [baseline(history, name) for name in BASELINES]
    found: set[str] = set()
    for block in blocks:
        found.update(str(k) for k in mapping(block.get("global_metrics")))
        for metrics in site_metrics(block).values():
            found.update(str(k) for k in metrics)
    found = {name for name in found if not is_context_metric(name)}
    head = primary_metric(history) if primary is None else primary
    rest = sorted(found - {head, "loss"}, key=str.lower)
    order = [head] if head and head in found else []
    return order + (["loss"] if "loss" in found and head != "loss" else []) + rest


def site_names(history: Mapping[str, Any]) -> list[str]:
    """Sites in declaration order, then any that only appear in metrics (order of appearance)."""
    names: list[str] = []
    for site in history.get("sites") or []:
        if isinstance(site, Mapping) and site.get("name") is not None:
            names.append(str(site["name"]))
    blocks = [final_block(history), *(baseline(history, b) for b in BASELINES)]
    extra = [s for block in blocks for s in site_metrics(block)]
    extra += [s for r in rounds(history) for s in mapping(r.get("train_metrics"))]
    return list(dict.fromkeys(names + [str(s) for s in extra]))


def site_info(history: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """``site name -> declared row counts``, for the per-site table."""
    out: dict[str, Mapping[str, Any]] = {}
    for site in history.get("sites") or []:
        if isinstance(site, Mapping) and site.get("name") is not None:
            out[str(site["name"])] = site
    return out


def mean_over_sites(block: Mapping[str, Any], metric: str) -> float | None:
    """Unweighted mean over sites: each hospital counts once, however large its test set."""
    values = [as_float(m.get(metric)) for m in site_metrics(block).values()]
    present = [v for v in values if v is not None]
    if present:
        return sum(present) / len(present)
    return as_float(mapping(block.get("global_metrics")).get(metric))


def global_value(block: Mapping[str, Any], metric: str) -> float | None:
    """The example-weighted global value, else the mean over sites when only those exist."""
    value = as_float(mapping(block.get("global_metrics")).get(metric))
    return value if value is not None else mean_over_sites(block, metric)


@dataclass(frozen=True)
class HeadlineRow:
    """One metric across the three ways of training, as the headline table shows it."""

    metric: str
    higher_is_better: bool
    federated: float | None
    centralized: float | None
    local: float | None


def headline_rows(history: Mapping[str, Any]) -> list[HeadlineRow]:
    """Federated and centralized global values beside the local-only mean over sites."""
    final, central, local = (final_block(history), baseline(history, "centralized"),
                             baseline(history, "local"))
    return [HeadlineRow(metric=name, higher_is_better=higher_is_better(history, name),
                        federated=global_value(final, name),
                        centralized=global_value(central, name),
                        local=mean_over_sites(local, name))
            for name in metric_names(history)]


def improvement(ours: float | None, theirs: float | None, higher_better: bool) -> float | None:
    """How much better ``ours`` is than ``theirs``, positive meaning better in either direction."""
    if ours is None or theirs is None:
        return None
    return ours - theirs if higher_better else theirs - ours


def point_scale(metric: str) -> tuple[float, str]:
    """Multiplier and unit for differences: percentage points for [0, 1] scores, raw otherwise."""
    return (100.0, "points") if metric.lower() in _UNIT_INTERVAL else (1.0, "units")


@dataclass(frozen=True)
class Comparison:
    """The federated model against one reference, with ONE sign convention everywhere (report,
    console, history): ``federated_better_by`` is positive when the federated model is better,
    whichever direction the metric runs, and :attr:`text` says it in words."""

    reference: str
    metric: str
    higher_is_better: bool
    federated: float
    other: float
    federated_better_by: float

    @property
    def text(self) -> str:
        """'federated is 2.27 points better than pooled' (or worse than, or the same as)."""
        scale, unit = point_scale(self.metric)
        amount = abs(self.federated_better_by) * scale
        if f"{amount:.2f}" == "0.00":
            return f"federated is the same as {self.reference}"
        word = "better" if self.federated_better_by > 0 else "worse"
        return f"federated is {amount:.2f} {unit} {word} than {self.reference}"


def comparisons(history: Mapping[str, Any]) -> list[Comparison]:
    """The federated model against local-only and pooled training on the primary metric.

    Local-only is compared on the mean over sites (each hospital's own test set, equally
    weighted) because that is what a hospital deciding whether to join would experience; the
    comparison with pooled compares like with like, both example-weighted over the same test
    sets.
    """
    metric = primary_metric(history)
    better = higher_is_better(history, metric)
    final = final_block(history)
    local = baseline(history, "local")
    # Over the sites that have a local-only model (a networked site may refuse to train one).
    with_local = {"site_metrics": {k: v for k, v in site_metrics(final).items()
                                   if k in site_metrics(local)}} if site_metrics(local) else final
    pairs = [("local-only (mean over sites)", mean_over_sites(with_local, metric),
              mean_over_sites(local, metric)),
             ("pooled", global_value(final, metric),
              global_value(baseline(history, "centralized"), metric))]
    out = []
    for reference, ours, theirs in pairs:
        by = improvement(ours, theirs, better)
        if by is not None and ours is not None and theirs is not None:
            out.append(Comparison(reference, metric, better, ours, theirs, by))
    return out


@dataclass(frozen=True)
class SiteComparison:
    """One site's federated model against the model it trained alone, on the primary metric,
    or why it has no local-only model (``missing``: a networked site refused or failed)."""

    site: str
    comparison: Comparison | None
    missing: str | None = None

    @property
    def text(self) -> str:
        if self.comparison is not None:
            return self.comparison.text
        return f"no local-only model: {self.missing or 'not reported'}"


def site_comparisons(history: Mapping[str, Any]) -> list[SiteComparison]:
    """Per site: did joining help? The federated model on the site's own test rows against
    the site's local-only model on the same rows (empty without a local-only baseline)."""
    local = baseline(history, "local")
    if not local:
        return []
    metric = primary_metric(history)
    better = higher_is_better(history, metric)
    ours_by_site, theirs_by_site = site_metrics(final_block(history)), site_metrics(local)
    failed = mapping(local.get("sites_failed"))
    out = []
    for site in site_names(history):
        ours = as_float(ours_by_site.get(site, {}).get(metric))
        theirs = as_float(theirs_by_site.get(site, {}).get(metric))
        by = improvement(ours, theirs, better)
        if by is not None and ours is not None and theirs is not None:
            out.append(SiteComparison(site, Comparison("its local-only model", metric, better,
                                                       ours, theirs, by)))
        elif site in failed:
            out.append(SiteComparison(site, None, str(failed[site])))
    return out


def comparisons_json(history: Mapping[str, Any]) -> list[dict[str, Any]]:
    """:func:`comparisons` as ``history.json`` records them."""
    return [{"reference": c.reference, "metric": c.metric,
             "higher_is_better": c.higher_is_better, "federated": c.federated,
             "other": c.other, "federated_better_by": c.federated_better_by, "text": c.text}
            for c in comparisons(history)]


def headline_sentence(history: Mapping[str, Any]) -> str | None:
    """'On accuracy (higher is better): federated is X points better than local-only (mean
    over sites); federated is Y points worse than pooled.', or None without baselines."""
    found = comparisons(history)
    if not found:
        return None
    metric = found[0].metric
    direction = "higher" if found[0].higher_is_better else "lower"
    return f"On {metric} ({direction} is better): " + "; ".join(c.text for c in found) + "."


def trivial_value(block: Mapping[str, Any], metric: str, site: str | None = None
                  ) -> float | None:
    """The trivial (best constant) prediction's ``metric`` on a site's test rows, or the
    example-weighted global one."""
    key = TRIVIAL + metric
    if site is None:
        return global_value(block, key)
    return as_float(site_metrics(block).get(site, {}).get(key))


def prevalence_text(metrics: Mapping[str, Any]) -> str:
    """'12.5 %' (binary: share of the positive class) or '0: 40 %, 1: 35 %, 2: 25 %'
    (class shares), '—' when the site reported none."""
    p = as_float(metrics.get("prevalence"))
    if p is not None:
        return f"{p * 100:.1f} %"
    shares = sorted(((k.removeprefix("class_share_"), as_float(v)) for k, v in metrics.items()
                     if str(k).startswith("class_share_")), key=lambda kv: (len(kv[0]), kv[0]))
    parts = [f"{k}: {v * 100:.0f} %" for k, v in shares if v is not None]
    return ", ".join(parts) if parts else "—"


def evaluated_curve(history: Mapping[str, Any], metric: str,
                    site: str | None = None) -> list[tuple[int, float]]:
    """(round, value) for rounds that evaluated ``metric``; round 0 is the initial model.

    Rounds without evaluation are skipped rather than drawn as zeros, so a run that evaluates
    every fifth round still gives an honest curve.
    """
    records: list[tuple[int, Mapping[str, Any]]] = []
    initial = mapping(history.get("initial"))
    if initial:
        records.append((0, initial))
    records += [(int(r["round"]), r) for r in rounds(history) if _is_round_number(r.get("round"))]
    points: list[tuple[int, float]] = []
    for number, block in records:
        if site is None:
            value = as_float(mapping(block.get("global_metrics")).get(metric))
        else:
            value = as_float(site_metrics(block).get(site, {}).get(metric))
        if value is not None:
            points.append((number, value))
    return points


def train_loss_key(history: Mapping[str, Any]) -> str | None:
    """The training-loss key sites reported (``train_loss`` preferred), or None."""
    keys: list[str] = []
    for record in rounds(history):
        for metrics in mapping(record.get("train_metrics")).values():
            keys.extend(str(k) for k in mapping(metrics))
    for preferred in ("train_loss", "loss"):
        if preferred in keys:
            return preferred
    return keys[0] if keys else None


def train_curve(history: Mapping[str, Any], site: str, key: str) -> list[tuple[int, float]]:
    """(round, training metric) for the rounds in which ``site`` trained and reported ``key``."""
    points: list[tuple[int, float]] = []
    for record in rounds(history):
        if not _is_round_number(record.get("round")):
            continue
        value = as_float(mapping(mapping(record.get("train_metrics")).get(site)).get(key))
        if value is not None:
            points.append((int(record["round"]), value))
    return points


def _is_round_number(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def human_bytes(count: Any) -> str:
    """Binary units (KiB, MiB, ...) so traffic reads at a glance; '—' when unknown."""
    value = as_float(count)
    if value is None:
        return "—"
    units = ("B", "KiB", "MiB", "GiB", "TiB")
    step = 0
    while abs(value) >= 1024 and step < len(units) - 1:
        value /= 1024
        step += 1
    return f"{value:.0f} B" if step == 0 else f"{value:.1f} {units[step]}"


def format_value(value: Any, digits: int = 4) -> str:
    """Metric values with a fixed number of significant digits; '—' when missing."""
    number = as_float(value)
    if number is None:
        return "—" if value is None else str(value)
    return f"{number:.{digits}g}" if abs(number) >= 1e4 or 0 < abs(number) < 1e-3 else (
        f"{number:.{digits}f}")


def total(values: Iterable[Any]) -> float:
    """Sum of the numeric values, ignoring anything missing or malformed."""
    return sum(v for v in (as_float(x) for x in values) if v is not None)
