"""Model registry entries and cards (engine/registry.py): built from a real simulation,
content addressed, and the card's privacy statement and per-site table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedcare.cli.main import app
from fedcare.core.errors import FedcareError
from fedcare.engine.registry import (
    ENTRY_FILE,
    RegistryEntry,
    build_entry,
    card_html,
    card_markdown,
    read_entry,
)
from fedcare.sim.runner import simulate

CONFIG = {
    "study": {"name": "bc-registry", "seed": 0, "rounds": 2},
    "data": {"source": "builtin", "dataset": "breast_cancer", "sites": 3,
             "partition": "iid", "test_fraction": 0.25},
    "model": {"name": "logreg"},
    "train": {"local_epochs": 1, "batch_size": 32, "lr": 0.1},
    "strategy": {"name": "fedavg"},
    "baselines": {"local": True, "centralized": True},
}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run")
    simulate(CONFIG, output_dir=out, overwrite=True)
    return out


def test_a_simulation_writes_its_registry_entry(run: Path) -> None:
    entry = read_entry(run)
    history = json.loads((run / "history.json").read_text())
    assert entry.study == "bc-registry" and entry.mode == "simulation"
    assert entry.study_hash == history["config_hash"]
    assert entry.rounds == 2 and entry.strategy == "fedavg"
    assert [s.name for s in entry.sites] == ["site-1", "site-2", "site-3"]
    assert all(s.train_rows and s.test_rows and len(s.dataset_digest or "") == 64
               for s in entry.sites)
    assert all(s.local_only is not None and "accuracy" in s.metrics for s in entry.sites)
    assert entry.pooled is not None and entry.local_only is not None
    assert set(entry.model_files) == {"model.safetensors"}
    assert entry.privacy.mode == "none" and all(s.epsilon is None for s in entry.sites)


def test_an_entry_is_frozen_and_content_addressed(run: Path) -> None:
    entry = read_entry(run)
    with pytest.raises(ValueError):
        entry.study = "other"  # type: ignore[misc]
    doc = json.loads((run / ENTRY_FILE).read_text())
    doc["global_metrics"]["accuracy"] = 1.0
    changed = RegistryEntry.model_validate(doc)
    with pytest.raises(FedcareError, match="changed after its release"):
        changed.verify()


def test_a_second_release_is_a_new_entry(run: Path) -> None:
    history = json.loads((run / "history.json").read_text())
    files = {"model.safetensors": "0" * 64}
    a = build_entry(history, files, created="2026-01-01T00:00:00+00:00")
    b = build_entry(history, files, created="2026-01-02T00:00:00+00:00")
    assert a.id != b.id


def test_card_without_dp_says_it_may_memorise(run: Path) -> None:
    md = card_markdown(read_entry(run))
    assert "No differential privacy: the model may memorise training records" in md
    assert "must write the intended use" in md
    assert "| site-1 |" in md and "local-only accuracy" in md and "trivial accuracy" in md
    page = card_html(read_entry(run))
    assert page.startswith("<!doctype html>") and "<script" not in page and "src=" not in page


def test_card_with_dp_gives_epsilon_per_site(run: Path) -> None:
    history = json.loads((run / "history.json").read_text())
    history["config"]["privacy"] = {"mode": "dp_sgd"}
    history["privacy"] = {"mechanism": "dp_sgd", "unit": "record", "delta": 1e-5,
                          "accountant": "pld", "epsilon": 3.5,
                          "sites": {"site-1": {"epsilon": 3.5}, "site-2": {"epsilon": 2.0},
                                    "site-3": {"epsilon": 1.0}}}
    entry = build_entry(history, {"model.safetensors": "0" * 64})
    assert [s.epsilon for s in entry.sites] == [3.5, 2.0, 1.0]
    md = card_markdown(entry)
    assert "epsilon 3.500 at delta" in md and "| site-2 | 2.000 |" in md
    assert "may memorise" not in md and "floating point" in md


def test_cli_card_of_a_local_run(run: Path, tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["model", "card", str(run)])
    assert res.exit_code == 0, res.output
    assert "# Model card: bc-registry" in res.output
    out = tmp_path / "card.html"
    res = CliRunner().invoke(app, ["model", "card", str(run), "--format", "html", "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert "<h2>Privacy</h2>" in out.read_text()
    res = CliRunner().invoke(app, ["model", "card", str(tmp_path / "nothing")])
    assert res.exit_code == 2


def test_a_dp_sgd_simulation_records_epsilon_per_site(tmp_path: Path) -> None:
    cfg = {**CONFIG, "data": {**CONFIG["data"], "standardize": False},
           "baselines": {"local": False, "centralized": False},
           "privacy": {"mode": "dp_sgd", "noise_multiplier": 1.0, "clip": 1.0}}
    simulate(cfg, output_dir=tmp_path, overwrite=True)
    entry = read_entry(tmp_path)
    assert entry.privacy.mode == "dp_sgd" and entry.privacy.delta
    assert all(isinstance(s.epsilon, float) and s.epsilon > 0 for s in entry.sites)
    assert entry.pooled is None and entry.local_only is None
    md = card_markdown(entry)
    assert "Differential privacy (dp_sgd" in md and "may memorise" not in md
    assert "No pooled baseline was trained." in md


def test_the_studys_description_is_the_cards_intended_use(tmp_path: Path) -> None:
    """study.description travels into the registry entry and the card (HTML-escaped)."""
    text = "Adults seen in 2020; 5-year risk of MI <or> stroke; not for triage."
    simulate({**CONFIG, "study": {**CONFIG["study"], "description": text}},
             output_dir=tmp_path, overwrite=True)
    entry = read_entry(tmp_path)
    assert entry.description == text
    md = card_markdown(entry)
    assert text in md and "must write the intended use" not in md
    page = card_html(entry)
    assert "MI &lt;or&gt; stroke" in page and "<or>" not in page
