"""What a site claims, checked: its FedAvg weight against what it declared, and how far its
update lies from the round's others (audit F3).

FedAvg weights each update by the examples its site says it trained on (McMahan et al. 2017).
Unchecked, that number is whatever the site claims: one site answering ``num_examples =
10**12`` with a poisoned model made the poisoned model the global one, and nothing was logged.
Two checks, both pure functions the round engine applies:

- :func:`cap_examples`: a reply claiming more examples than its site's bound (the rows it
  declared when it enrolled, or its real row count in a simulation) is capped to the bound,
  and the cap is recorded in the round's ``sites_flagged``.
- :func:`robust_outliers`: updates whose distance to the global model is far above the
  round's median (a robust z-score) are flagged. Flagged only, never dropped: sites with very
  different data (non-IID) legitimately move further, and a false alarm must not cost a
  hospital its contribution. The flag puts a human in the loop (the study's event log).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import replace

from fedcare.core.limits import MAX_COUNT
from fedcare.core.messages import Update

#: Slack on a declared row count: a node reports a clinical dataset's rows rounded down to 10
#: (exact, they would let the hub recover suppressed cells of its quality report).
ROWS_SLACK = 9
#: Modified z-score above which an update is flagged as an outlier (Iglewicz and Hoaglin,
#: "How to Detect and Handle Outliers", 1993, recommend 3.5).
OUTLIER_Z = 3.5
#: The robust scale is at least this share of the median distance, so a flagged update lies
#: more than ``1 + OUTLIER_Z * MIN_RELATIVE_SCALE`` (4.5) times the median distance from the
#: global model. The check is meant for gross outliers (a poisoned or broken update), not
#: for heterogeneity: a site with several times more rows takes several times more steps
#: and honestly moves further, and with three sites the MAD alone would flag it.
MIN_RELATIVE_SCALE = 1.0
#: Fewer updates than this give no meaningful median to compare with.
MIN_UPDATES_FOR_OUTLIERS = 3


def example_bound(declared_rows: int) -> int:
    """The most examples a site may claim for a dataset it declared ``declared_rows`` of."""
    return min(MAX_COUNT, max(0, int(declared_rows)) + ROWS_SLACK)


def cap_examples(update: Update, bound: int) -> tuple[Update, str | None]:
    """``update`` with its example counts capped to ``bound``, and why (None: within it).

    Both counts are capped: ``num_examples`` is the FedAvg weight, ``num_eval_examples``
    weights the site's evaluation metrics in the federation's mean."""
    over = [f"{n} {what} examples" for what, n in
            (("training", update.num_examples), ("evaluation", update.num_eval_examples))
            if n > bound]
    if not over:
        return update, None
    capped = replace(update, num_examples=min(update.num_examples, bound),
                     num_eval_examples=min(update.num_eval_examples, bound))
    return capped, (f"claimed {' and '.join(over)}, more than the {bound} it declared; "
                    f"weight capped to {bound}")


def robust_outliers(distances: Mapping[str, float], *, threshold: float = OUTLIER_Z
                    ) -> dict[str, float]:
    """The sites whose distance is far ABOVE the round's median, with their robust z-score.

    The modified z-score ``(d - median) / (MAD / 0.6745)`` (Iglewicz and Hoaglin 1993) is
    not moved by the outliers themselves, unlike a mean and a standard deviation, which one
    huge update inflates until it hides itself. One-sided: an update close to the global
    model is no threat. Needs :data:`MIN_UPDATES_FOR_OUTLIERS` distances.
    """
    if len(distances) < MIN_UPDATES_FOR_OUTLIERS:
        return {}
    values = sorted(distances.values())
    median = _median(values)
    mad = _median(sorted(abs(v - median) for v in values))
    scale = max(mad / 0.6745, MIN_RELATIVE_SCALE * median, 1e-12)
    out = {}
    for site, d in distances.items():
        z = (d - median) / scale
        if not math.isfinite(d) or z > threshold:
            out[site] = z if math.isfinite(z) else math.inf
    return out


def _median(values: list[float]) -> float:
    n = len(values)
    mid = n // 2
    return values[mid] if n % 2 else (values[mid - 1] + values[mid]) / 2
