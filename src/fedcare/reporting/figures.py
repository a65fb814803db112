"""The report's figures, each a function from a history mapping to PNG bytes (or None).

matplotlib is imported inside the functions so that ``import fedcare`` stays light on a site
node that never draws. Figures are built with the object-oriented API on an Agg canvas rather
than through ``pyplot``: that renders without a display and leaves the caller's own backend
and figure registry alone (a notebook user keeps their inline plots), and nothing has to be
remembered to close. Colours are Okabe & Ito's colour-blind-safe palette, with line styles
cycling as a second cue once sites outnumber colours.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from fedcare.reporting import summary as s

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

DPI = 100
# Okabe & Ito (2008), "Color Universal Design"; yellow dropped: unreadable on white.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#000000")
LINESTYLES = ("-", "--", ":", "-.")
METHOD_COLOURS = {"federated": "#0072B2", "local": "#E69F00", "centralized": "#009E73"}
METHOD_LABELS = {"federated": "federated", "local": "local-only", "centralized": "centralized"}
_MAX_LEGEND_ROWS = 18


def _new_figure(width: float, height: float, panels: int = 1) -> tuple[Figure, list[Axes]]:
    """A figure on the Agg canvas, independent of pyplot's global state."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(figure)
    axes = [figure.add_subplot(1, panels, i + 1) for i in range(panels)]
    for ax in axes:
        ax.grid(True, alpha=0.3)
    return figure, axes


def _integer_rounds(ax: Axes) -> None:
    """Rounds are whole numbers: no '2.5' ticks on the x axis."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _png(figure: Figure) -> bytes:
    """Tight-layout PNG at 100 dpi; the buffer is the figure's only reference afterwards."""
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight",
                   metadata={"Software": None})
    figure.clear()
    return buffer.getvalue()


def label(text: str, limit: int = 28) -> str:
    """User text made safe for matplotlib: no mathtext from ``$``, no legend-hiding ``_``.

    Long names are shortened so they cannot squeeze the plot; tables show them in full.
    """
    short = text if len(text) <= limit else text[: limit - 1] + "…"
    safe = short.replace("$", r"\$")
    return " " + safe if safe.startswith("_") else safe


def _site_style(index: int) -> dict[str, Any]:
    return {"color": PALETTE[index % len(PALETTE)],
            "linestyle": LINESTYLES[(index // len(PALETTE)) % len(LINESTYLES)]}


def _legend(ax: Axes, entries: int) -> None:
    """Legend beside the plot once it would cover the lines; several columns for many sites."""
    if entries <= 4:
        ax.legend(fontsize="small")
        return
    columns = -(-entries // _MAX_LEGEND_ROWS)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), ncols=columns,
              title="site")


def _draw_curve(ax: Axes, points: Sequence[tuple[int, float]], **style: Any) -> None:
    xs, ys = zip(*points, strict=True)
    marker = "o" if len(points) <= 30 else None
    ax.plot(xs, ys, marker=marker, markersize=4, **style)


def _baseline_lines(ax: Axes, history: Mapping[str, Any], metric: str) -> int:
    """Dashed horizontal lines for the example-weighted baselines; returns how many were drawn."""
    drawn = 0
    for name in s.BASELINES:
        value = s.global_value(s.baseline(history, name), metric)
        if value is not None:
            ax.axhline(value, color=METHOD_COLOURS[name], linestyle="--", linewidth=1.5,
                       label=f"{METHOD_LABELS[name]} (baseline)")
            drawn += 1
    return drawn


def convergence_png(history: Mapping[str, Any]) -> bytes | None:
    """Global primary metric (and loss, on a second panel) per evaluated round."""
    primary = s.primary_metric(history)
    metrics = [primary] + (["loss"] if primary != "loss" else [])
    curves = {m: s.evaluated_curve(history, m) for m in metrics}
    metrics = [m for m in metrics if curves[m]]
    if not metrics:
        return None
    figure, axes = _new_figure(5.2 * len(metrics) + 0.8, 3.8, panels=len(metrics))
    for ax, metric in zip(axes, metrics, strict=True):
        _draw_curve(ax, curves[metric], color=METHOD_COLOURS["federated"], linewidth=2,
                    label="federated (global)")
        entries = 1 + _baseline_lines(ax, history, metric)
        direction = "higher" if s.higher_is_better(history, metric) else "lower"
        ax.set_title(f"Global {label(metric)} per round ({direction} is better)")
        ax.set_xlabel("round (0 = initial model)")
        _integer_rounds(ax)
        ax.set_ylabel(label(metric))
        _legend(ax, entries)
    return _png(figure)


def site_bars_png(history: Mapping[str, Any]) -> bytes | None:
    """Grouped bars: final primary metric per site for federated, local-only and centralized."""
    primary = s.primary_metric(history)
    blocks = {"federated": s.final_block(history),
              **{name: s.baseline(history, name) for name in ("local", "centralized")}}
    sites = s.site_names(history)
    values = {method: [s.as_float(s.site_metrics(block).get(site, {}).get(primary))
                       for site in sites] for method, block in blocks.items()}
    methods = [m for m, vs in values.items() if any(v is not None for v in vs)]
    if not methods:
        return None
    figure, (ax,) = _new_figure(min(max(6.0, 0.55 * len(sites) * len(methods) + 2), 16), 4.0)
    ax.grid(False, axis="x")
    ax.set_axisbelow(True)
    width = 0.8 / len(methods)
    for offset, method in enumerate(methods):
        shift = (offset - (len(methods) - 1) / 2) * width
        bars = [(i + shift, v) for i, v in enumerate(values[method]) if v is not None]
        ax.bar([x for x, _ in bars], [v for _, v in bars], width=width,
               color=METHOD_COLOURS[method], label=METHOD_LABELS[method])
    tilt = len(sites) > 6 or max(map(len, sites)) > 12
    ax.set_xticks(range(len(sites)), [label(site, 20) for site in sites],
                  rotation=30 if tilt else 0, ha="right" if tilt else "center")
    ax.set_title(f"Final {label(primary)} per site")
    ax.set_xlabel("site (evaluated on its own test set)")
    ax.set_ylabel(label(primary))
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _png(figure)


def _per_site_lines(history: Mapping[str, Any], title: str, ylabel: str,
                    curves: Mapping[str, Sequence[tuple[int, float]]]) -> bytes | None:
    """One line per site over rounds: spot the hospital that lags or diverges."""
    drawn = {site: points for site, points in curves.items() if points}
    if not drawn:
        return None
    figure, (ax,) = _new_figure(9.0, 4.0)
    for index, site in enumerate(s.site_names(history)):
        if site in drawn:
            _draw_curve(ax, drawn[site], label=label(site), linewidth=1.5, **_site_style(index))
    ax.set_title(title)
    ax.set_xlabel("round")
    _integer_rounds(ax)
    ax.set_ylabel(ylabel)
    _legend(ax, len(drawn))
    return _png(figure)


def site_curves_png(history: Mapping[str, Any]) -> bytes | None:
    """Each site's primary metric over rounds, evaluated on that site's test set."""
    primary = s.primary_metric(history)
    curves = {site: s.evaluated_curve(history, primary, site)
              for site in s.site_names(history)}
    return _per_site_lines(history, f"Per-site {label(primary)} of the global model per round",
                           label(primary), curves)


def train_loss_png(history: Mapping[str, Any]) -> bytes | None:
    """Each site's local training loss per round, as the sites reported it."""
    key = s.train_loss_key(history)
    if key is None:
        return None
    curves = {site: s.train_curve(history, site, key) for site in s.site_names(history)}
    title = f"Local training loss per site per round ({label(key)})"
    return _per_site_lines(history, title, label(key), curves)
