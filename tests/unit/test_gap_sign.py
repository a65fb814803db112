"""One sign convention for "federated against a baseline", in words, everywhere (issue 14,
item 3): the report's headline once said "-2.27 points (positive = better)" when the
federated model was 2.27 points better than pooled."""

from __future__ import annotations

import io
from typing import Any

import pytest
from rich.console import Console

from fedcare.cli.render import print_results
from fedcare.reporting import render_report
from fedcare.reporting import summary as s


def _history(metric: str, higher: bool, fed: float, local: float, pooled: float
             ) -> dict[str, Any]:
    def block(value: float) -> dict[str, Any]:
        return {"site_metrics": {"a": {metric: value}, "b": {metric: value}},
                "global_metrics": {metric: value}}

    return {"study": "sign", "primary_metric": metric, "higher_is_better": higher,
            "sites": [{"name": "a", "train_rows": 10, "test_rows": 5},
                      {"name": "b", "train_rows": 10, "test_rows": 5}],
            "rounds": [], "final": block(fed),
            "baselines": {"local": block(local), "centralized": block(pooled)}}


CASES = [
    # metric, higher is better, federated, local-only, pooled, expected words
    ("accuracy", True, 0.9127, 0.80, 0.89, ["federated is 11.27 points better than local-only",
                                             "federated is 2.27 points better than pooled"]),
    ("accuracy", True, 0.8673, 0.90, 0.89, ["federated is 3.27 points worse than local-only",
                                             "federated is 2.27 points worse than pooled"]),
    ("brier", False, 0.10, 0.15, 0.1227, ["federated is 5.00 points better than local-only",
                                          "federated is 2.27 points better than pooled"]),
    ("brier", False, 0.1454, 0.12, 0.1227, ["federated is 2.54 points worse than local-only",
                                            "federated is 2.27 points worse than pooled"]),
    ("rmse", False, 1.0, 3.5, 3.0, ["federated is 2.50 units better than local-only",
                                    "federated is 2.00 units better than pooled"]),
    ("mse", False, 4.0, 2.5, 3.0, ["federated is 1.50 units worse than local-only",
                                   "federated is 1.00 units worse than pooled"]),
]


@pytest.mark.parametrize(("metric", "higher", "fed", "local", "pooled", "words"), CASES)
def test_report_console_and_history_say_the_same_words(metric: str, higher: bool, fed: float,
                                                       local: float, pooled: float,
                                                       words: list[str]) -> None:
    history = _history(metric, higher, fed, local, pooled)

    sentence = s.headline_sentence(history)
    document = render_report(history)
    out = io.StringIO()
    print_results(history, Console(file=out, width=200))
    recorded = s.comparisons_json(history)

    assert sentence is not None
    direction = "higher" if higher else "lower"
    assert sentence.startswith(f"On {metric} ({direction} is better): ")
    for phrase in words:
        assert phrase in sentence
        assert phrase in document
        assert phrase in out.getvalue()
    assert "positive = better" not in document and "gap to pooled" not in document
    # history: federated_better_by is positive exactly when the words say "better"
    for record, phrase in zip(recorded, words, strict=True):
        assert record["text"].startswith(phrase)
        assert (record["federated_better_by"] > 0) == (" better than " in phrase)


def test_equal_scores_read_as_the_same() -> None:
    history = _history("auc", True, 0.8, 0.8, 0.8)

    assert s.headline_sentence(history) == (
        "On auc (higher is better): federated is the same as local-only (mean over sites); "
        "federated is the same as pooled.")
