"""The hyper-parameters of federated gradient-boosted trees, declared once.

The names and meanings are XGBoost's (``eta`` is ``learning_rate``, ``lambda`` is
``reg_lambda``, ``min_split_loss`` is ``gamma``), so that a study's ``[model]`` section and an
``xgboost.train`` call on pooled data describe the same model (Chen & Guestrin 2016,
"XGBoost: A Scalable Tree Boosting System", KDD).
"""

from __future__ import annotations

from typing import Any, Literal

import annotated_types
import pydantic
from pydantic import Field, model_validator

from fedcare.core.errors import ConfigError
from fedcare.core.settings import Section

#: Objectives the trees learn: log loss on a 0/1 label, or squared error.
Objective = Literal["binary:logistic", "reg:squarederror"]
#: Deepest tree: a level of depth d carries 2^d node histograms per round, so depth 10
#: (512 nodes at the last histogram level) is already a large message.
MAX_DEPTH = 10
MAX_TREES = 2000
MAX_BIN = 1024
#: The fine grid of the federation-wide quantile sketch (:mod:`.sketch`), per feature.
MAX_SKETCH_BINS = 65_536


class TreeOptions(Section):
    """Hyper-parameters of gradient-boosted trees (XGBoost's, under XGBoost's names)."""

    objective: Objective = Field("binary:logistic", description=(
        "trees: loss - log loss on a 0/1 label (binary:logistic) or squared error "
        "(reg:squarederror)."))
    n_trees: int = Field(50, ge=1, le=MAX_TREES, description="trees: boosting rounds (trees).")
    max_depth: int = Field(4, ge=1, le=MAX_DEPTH, description="trees: depth of each tree.")
    learning_rate: float = Field(0.3, gt=0, le=1, description=(
        "trees: shrinkage of each tree's leaf values (XGBoost's eta)."))
    reg_lambda: float = Field(1.0, ge=0, le=1e6, description=(
        "trees: L2 penalty on leaf values (XGBoost's lambda)."))
    gamma: float = Field(0.0, ge=0, le=1e6, description=(
        "trees: least loss reduction a split must bring (XGBoost's min_split_loss)."))
    min_child_weight: float = Field(1.0, ge=0, le=1e6, description=(
        "trees: least hessian sum in each child of a split."))
    max_bin: int = Field(64, ge=2, le=MAX_BIN, description=(
        "trees: histogram bins per feature (split candidates + 1), as XGBoost's hist."))
    sketch_bins: int = Field(1024, ge=16, le=MAX_SKETCH_BINS, description=(
        "trees: equal-width bins per feature of the federation-wide count sketch from which "
        "the max_bin quantile cuts are read (at least max_bin)."))
    base_score: float | None = Field(None, ge=-1e6, le=1e6, description=(
        "trees: initial prediction (a probability in (0, 1) for binary:logistic); unset: "
        "the federation's label mean, as XGBoost does."))

    @model_validator(mode="after")
    def _check(self) -> TreeOptions:
        if self.sketch_bins < self.max_bin:
            raise ValueError(f"sketch_bins={self.sketch_bins} must be at least "
                             f"max_bin={self.max_bin}")
        if self.base_score is not None and self.objective == "binary:logistic" \
                and not 0 < self.base_score < 1:
            raise ValueError(f"base_score={self.base_score} must be a probability in (0, 1) "
                             "for binary:logistic")
        return self


def _range(field: Any) -> str:
    """The valid range of a numeric field, read from its declared bounds."""
    low, high = "-inf", "inf"
    lo_br, hi_br = "[", "]"
    for m in field.metadata:
        if isinstance(m, annotated_types.Ge):
            low = f"{m.ge:g}"
        elif isinstance(m, annotated_types.Gt):
            low, lo_br = f"{m.gt:g}", "("
        elif isinstance(m, annotated_types.Le):
            high = f"{m.le:g}"
        elif isinstance(m, annotated_types.Lt):
            high, hi_br = f"{m.lt:g}", ")"
    return f"{lo_br}{low}, {high}{hi_br}"


def tree_options(**values: Any) -> TreeOptions:
    """Validated :class:`TreeOptions`, or a :class:`ConfigError` whose every problem names
    the parameter, the value given and the valid range."""
    try:
        return TreeOptions(**values)
    except pydantic.ValidationError as exc:
        problems = []
        for e in exc.errors():
            key = ".".join(str(p) for p in e["loc"])
            field = TreeOptions.model_fields.get(key)
            if e["type"] == "extra_forbidden":
                problems.append(f"trees have no option {key!r}; valid options: "
                                f"{', '.join(TreeOptions.model_fields)}")
            elif field is not None and e["type"] in {"greater_than", "greater_than_equal",
                                                     "less_than", "less_than_equal"}:
                problems.append(f"{key} = {e['input']!r} is out of range: valid "
                                f"{_range(field)}")
            else:
                problems.append(f"{key or 'trees'}: {e['msg']}")
        raise ConfigError(problems) from None


def check_bins_vs_rows(options: TreeOptions, site_rows: int, *, site: str | None = None) -> None:
    """Refuse a site with fewer rows than histogram bins: most of its bins would hold one row
    or none, so its histograms would reveal single records (and its quantiles are noise)."""
    if site_rows < options.max_bin:
        who = f"site {site!r}" if site else "a site"
        raise ConfigError(f"max_bin = {options.max_bin} is more than the {site_rows} rows of "
                          f"{who}: lower max_bin to at most {site_rows}")


def histogram_floats(options: TreeOptions, n_features: int) -> int:
    """Floats in the largest per-level histogram message (the deepest histogram level,
    ``max_depth - 1``): ``2^(max_depth-1) x n_features x (max_bin + 1) x 2``."""
    return 2 ** (options.max_depth - 1) * n_features * (options.max_bin + 1) * 2
