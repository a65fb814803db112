"""The HTML report: complete, self-contained, safe with user-supplied names, robust to gaps."""

from __future__ import annotations

import base64
import copy
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from fedcare.reporting import render_report, write_report
from fedcare.reporting import summary as s

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SITES = {"site-1": (120, 30), "site-2": (80, 20), "site-3": (300, 75)}


def _classification(quality: float, skew: float = 0.0) -> dict[str, float]:
    """Plausible binary metrics for a model of a given quality in [0, 1]."""
    q = min(max(quality + skew, 0.0), 1.0)
    return {"loss": round(0.7 - 0.45 * q, 4), "accuracy": round(0.5 + 0.45 * q, 4),
            "auc": round(0.5 + 0.48 * q, 4)}


def _weighted(per_site: dict[str, dict[str, float]]) -> dict[str, float]:
    weights = {name: SITES.get(name, (0, 10))[1] for name in per_site}
    total = sum(weights.values())
    names = {m for metrics in per_site.values() for m in metrics}
    return {m: sum(per_site[site][m] * w for site, w in weights.items()) / total for m in names}


def _block(quality: float, sites: dict[str, Any] = SITES) -> dict[str, Any]:
    skews = [0.0, -0.05, 0.04, -0.02]
    per_site = {name: _classification(quality, skews[i % 4]) for i, name in enumerate(sites)}
    return {"site_metrics": per_site, "global_metrics": _weighted(per_site)}


def _round(number: int, evaluated: bool = True) -> dict[str, Any]:
    quality = 1 - 0.8 ** number
    block = _block(quality) if evaluated else {"site_metrics": {}, "global_metrics": {}}
    return {"round": number, "seconds": 0.12, "train_seconds": 0.1, "aggregate_seconds": 0.001,
            "bytes_down": 3 * 41_240, "bytes_up": 3 * 41_300,
            "sites_sampled": list(SITES), "sites_completed": list(SITES), "sites_failed": {},
            "train_metrics": {n: {"train_loss": 0.7 - 0.4 * quality + 0.02 * i}
                              for i, n in enumerate(SITES)},
            **block}


def full_history(rounds: int = 20) -> dict[str, Any]:
    """A binary-classification run with every field present."""
    return {
        "fedcare_version": "0.1.0", "study": "breast-cancer-demo",
        "created": "2026-11-23T18:00:00Z", "task": "binary", "primary_metric": "accuracy",
        "higher_is_better": True, "strategy": "fedavg", "model": "logreg",
        "rounds_planned": rounds,
        "config": {"study": "breast-cancer-demo", "rounds": rounds,
                   "strategy": {"name": "fedavg", "fraction_fit": 1.0},
                   "learner": {"model": "logreg", "lr": 0.1, "local_epochs": 1}},
        "sites": [{"name": n, "train_rows": tr, "test_rows": te} for n, (tr, te) in SITES.items()],
        "initial": _block(0.0),
        "rounds": [_round(r) for r in range(1, rounds + 1)],
        "final": _block(1 - 0.8 ** rounds),
        "baselines": {"local": _block(0.6), "centralized": _block(1.0)},
        "timing": {"total_seconds": 3.2, "mean_round_seconds": 0.12},
        "privacy": {},
    }


def sparse_history() -> dict[str, Any]:
    """No baselines, no initial evaluation, and evaluation only in the last round."""
    history = full_history(rounds=5)
    for record in history["rounds"][:-1]:
        record["site_metrics"], record["global_metrics"] = {}, {}
    del history["baselines"], history["initial"], history["final"], history["privacy"]
    return history


def regression_history() -> dict[str, Any]:
    """A regression run scored by MSE: lower is better everywhere."""
    history = full_history(rounds=8)
    history.update(task="regression", primary_metric="mse", higher_is_better=False)

    def to_mse(block: dict[str, Any]) -> dict[str, Any]:
        per_site = {n: {"loss": m["loss"], "mse": round(2 * m["loss"], 4)}
                    for n, m in block["site_metrics"].items()}
        return {"site_metrics": per_site, "global_metrics": _weighted(per_site)}

    for record in history["rounds"]:
        record.update(to_mse(record))
    for key in ("initial", "final"):
        history[key] = to_mse(history[key])
    history["baselines"] = {k: to_mse(v) for k, v in history["baselines"].items()}
    return history


EVIL = "cost $5 <script>alert('x')</script>"


def failing_history() -> dict[str, Any]:
    """A site with a hostile name that fails a round with a hostile reason."""
    history = copy.deepcopy(full_history(rounds=6))
    history["study"] = "<b>study</b>"
    history["sites"].append({"name": EVIL, "train_rows": 10, "test_rows": 5})
    history["rounds"][2]["sites_sampled"].append(EVIL)
    history["rounds"][2]["sites_failed"] = {EVIL: "timeout after 30 s <img src=x>"}
    history["rounds"][3]["train_metrics"][EVIL] = {"train_loss": 0.6}
    history["final"]["site_metrics"][EVIL] = {"loss": 0.5, "accuracy": 0.7, "auc": 0.8}
    return history


def _pngs(document: str) -> list[bytes]:
    encoded = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", document)
    return [base64.b64decode(e, validate=True) for e in encoded]


def _write(history: dict[str, Any], tmp_path: Path) -> str:
    target = tmp_path / "out" / "report.html"
    write_report(history, target)
    assert target.is_file()
    assert not list(target.parent.glob("*.tmp"))
    return target.read_text(encoding="utf-8")


def test_full_report_has_every_section_and_embedded_pngs(tmp_path: Path) -> None:
    # Arrange
    history = full_history()

    # Act
    document = _write(history, tmp_path)

    # Assert
    for heading in ("Headline", "Convergence", "Per site", "Local training", "Operations",
                    "Configuration"):
        assert f"<h2>{heading}</h2>" in document
    assert "breast-cancer-demo" in document and "fedavg" in document and "logreg" in document
    assert "better than local-only" in document and "than pooled" in document
    assert "<details>" in document and "&quot;local_epochs&quot;: 1" in document
    pngs = _pngs(document)
    assert len(pngs) >= 4
    assert all(png.startswith(PNG_MAGIC) for png in pngs)


def test_report_is_self_contained(tmp_path: Path) -> None:
    document = _write(full_history(), tmp_path)

    assert "<script" not in document.lower()
    assert not re.search(r"(src|href)=['\"]?(https?:|//)", document)


def test_sparse_history_without_baselines_still_renders(tmp_path: Path) -> None:
    document = _write(sparse_history(), tmp_path)

    assert "No baselines were run" in document
    assert "better than" not in document and "worse than" not in document
    assert len(_pngs(document)) >= 3


def test_regression_lower_is_better_reports_improvement_as_positive(tmp_path: Path) -> None:
    history = regression_history()

    document = _write(history, tmp_path)

    sentence = s.headline_sentence(history)
    assert sentence is not None
    assert sentence.startswith("On mse (lower is better): federated is ")
    assert "units better than local-only" in sentence
    assert "<th>mse ↓</th>" in document
    assert len(_pngs(document)) >= 3


def test_hostile_names_are_escaped_and_failures_highlighted(tmp_path: Path) -> None:
    document = _write(failing_history(), tmp_path)

    assert "<script>alert" not in document and "<img src=x>" not in document
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in document
    assert "&lt;b&gt;study&lt;/b&gt;" in document
    assert "<tr class=failed>" in document and "timeout after 30 s &lt;img src=x&gt;" in document
    assert len(_pngs(document)) >= 3


@pytest.mark.parametrize("history", [{}, {"study": "empty", "rounds": [], "sites": []},
                                     {"study": "junk", "rounds": [{"round": "x"}, 3],
                                      "final": {"global_metrics": {"accuracy": "n/a"}},
                                      "sites": ["nope"], "baselines": None}])
def test_degenerate_histories_do_not_crash(history: dict[str, Any]) -> None:
    document = render_report(history)

    assert document.startswith("<!DOCTYPE html>") and "<h2>Operations</h2>" in document


def test_write_replaces_existing_report_atomically(tmp_path: Path) -> None:
    target = tmp_path / "report.html"
    target.write_text("old", encoding="utf-8")

    write_report(sparse_history(), target)

    assert target.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]


def test_headline_sentence_for_higher_is_better_uses_points() -> None:
    history = full_history()
    history["final"] = {"site_metrics": {"a": {"accuracy": 0.90}, "b": {"accuracy": 0.80}},
                        "global_metrics": {"accuracy": 0.86}}
    history["baselines"] = {
        "local": {"site_metrics": {"a": {"accuracy": 0.80}, "b": {"accuracy": 0.70}}},
        "centralized": {"global_metrics": {"accuracy": 0.90}}}

    sentence = s.headline_sentence(history)

    assert sentence is not None
    assert sentence.startswith("On accuracy (higher is better): federated is 10.00 points "
                               "better than local-only")
    assert "federated is 4.00 points worse than pooled" in sentence


def test_human_bytes() -> None:
    assert [s.human_bytes(v) for v in (None, 512, 2048, 5 * 1024 ** 3)] == [
        "—", "512 B", "2.0 KiB", "5.0 GiB"]


def test_importing_reporting_does_not_import_matplotlib() -> None:
    code = "import sys, fedcare.reporting; sys.exit('matplotlib' in sys.modules)"

    result = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60,
                            check=False)

    assert result.returncode == 0, result.stderr.decode()
