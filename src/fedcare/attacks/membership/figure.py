"""The audit's ROC figure (PNG) and an HTML fragment for the study report.

Two panels: the usual linear ROC, and the log-log ROC Carlini et al. (2022) recommend,
because the low-FPR corner — where an attack is confidently right about a few people — is
invisible on a linear axis. matplotlib is used through the object-oriented API on an Agg
canvas, as in :mod:`fedcare.reporting.figures`, so no global pyplot state is touched.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping
from typing import Any

import numpy as np

DPI = 100
_BLUE, _GREY = "#0072B2", "#999999"


def roc_png(fpr: np.ndarray, tpr: np.ndarray, title: str) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8.0, 3.6), dpi=DPI)
    FigureCanvasAgg(figure)
    lin, log = figure.add_subplot(1, 2, 1), figure.add_subplot(1, 2, 2)
    lin.plot([0, 1], [0, 1], color=_GREY, linestyle="--", linewidth=1, label="chance")
    lin.step(fpr, tpr, where="post", color=_BLUE, label="attack")
    lin.set_xlabel("false positive rate")
    lin.set_ylabel("true positive rate")
    lin.legend(loc="lower right")
    floor = 1e-4
    grid = np.logspace(-4, 0, 50)
    log.loglog(grid, grid, color=_GREY, linestyle="--", linewidth=1)
    log.step(np.maximum(fpr, floor), np.maximum(tpr, floor), where="post", color=_BLUE)
    log.set_xlim(floor, 1)
    log.set_ylim(floor, 1)
    log.set_xlabel("false positive rate (log)")
    log.set_ylabel("true positive rate (log)")
    figure.suptitle(title)
    figure.tight_layout()
    buf = io.BytesIO()
    figure.savefig(buf, format="png")
    return buf.getvalue()


def describe_privacy(privacy: Mapping[str, Any]) -> str:
    """One line for people: the study's guarantee, or why there is none."""
    eps = privacy.get("epsilon")
    if isinstance(eps, (int, float)):
        delta = privacy.get("delta")
        tail = f", delta = {delta:.1e}" if isinstance(delta, (int, float)) else ""
        return f"epsilon = {eps:.3g}{tail}"
    if eps == "inf":
        return "not private (epsilon is infinite: noise multiplier 0)"
    return "not private (no DP accounting)"


def html_fragment(result: Mapping[str, Any], png: bytes | None) -> str:
    """A self-contained ``<section>`` (figure inlined as base64) for the HTML report."""
    esc = html.escape
    privacy = result.get("privacy", {})
    eps_text = (esc(describe_privacy(privacy)).replace("epsilon", "&epsilon;")
                .replace("delta", "&delta;"))
    rows = [("attack", esc(f"{result['attack']} ({result['variant']})")),
            ("data", esc(f"{result['site']}: {result['members']} members, "
                         f"{result['non_members']} non-members")),
            ("ROC AUC", f"{result['auc']:.3f}")]
    rows += [(f"TPR at FPR {float(k):.1%}", f"{v:.3f}")
             for k, v in result["tpr_at_fpr"].items()]
    rows.append(("study privacy", eps_text))
    table = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows)
    img = ""
    if png is not None:
        data = base64.b64encode(png).decode("ascii")
        img = (f"<figure><img src='data:image/png;base64,{data}' alt='membership-inference "
               "ROC'><figcaption>Attack ROC, linear and log-log; the dashed line is "
               "chance.</figcaption></figure>")
    note = ("<p>An AUC near 0.5 and a TPR at low FPR near the FPR mean the attack could not "
            "tell training rows from held-out rows. This is an empirical lower bound on "
            "leakage, not a guarantee; a DP guarantee is the &epsilon; above.</p>")
    return (f"<section class='privacy-audit'><h2>Privacy audit: membership inference</h2>"
            f"<table>{table}</table>{note}{img}</section>")
