"""Site-level DP studies in simulation with the default baselines (issue 14, item 1): the
README's privacy example ended with "only 0 of 1 sites completed ... got None" and wrote
nothing. Baselines now train without DP, labelled "no DP — reference only"."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fedcare.core.errors import FedcareError
from fedcare.engine.executor import BASELINE_NO_DP
from fedcare.sim.runner import _Run, simulate
from fedcare.transport.inmemory import InMemoryTransport


def _study(privacy: dict[str, Any], secure: str = "none") -> dict[str, Any]:
    # The README's privacy example, at a noise the DP check accepts; [baselines] left at
    # its default (local = true) as a new user would.
    return {"study": {"name": "dp-baselines", "seed": 0, "rounds": 3},
            "data": {"source": "builtin", "dataset": "breast_cancer", "sites": 4,
                     "stats_clip": [0, 4300]},  # DP feature statistics need the ranges
            "model": {"name": "logreg"},
            "secure_aggregation": {"protocol": secure},
            "baselines": {"centralized": True},
            "run": {"workers": 1},
            "privacy": privacy}


@pytest.mark.parametrize(("mode", "secure"), [("dp_fedavg_distributed", "secagg"),
                                              ("dp_fedavg_central", "none"),
                                              ("dp_sgd", "none")])
def test_site_level_dp_with_default_baselines_completes_and_labels_them(
        tmp_path: Path, mode: str, secure: str) -> None:
    cfg = _study({"mode": mode, "clip": 1.0, "noise_multiplier": 0.5, "delta": 1e-5}, secure)

    history = simulate(cfg, output_dir=tmp_path).to_dict()

    assert set(history["baselines"]) == {"local", "centralized"}
    for block in history["baselines"].values():
        assert block["privacy"] == "none" and block["note"] == BASELINE_NO_DP
        assert set(block["site_metrics"]) == {"site-1", "site-2", "site-3", "site-4"}
    written = json.loads((tmp_path / "history.json").read_text())
    assert written["baselines"]["local"]["note"] == "no DP — reference only"
    assert written["privacy"]["epsilon"] > 0  # the federated model itself is private
    assert "no DP — reference only" in (tmp_path / "report.html").read_text()


def test_non_dp_baselines_carry_no_label() -> None:
    cfg = _study({"mode": "none"})

    history = simulate(cfg).to_dict()

    assert "note" not in history["baselines"]["local"]


def test_a_failing_baseline_names_itself_and_its_cause() -> None:
    run = _Run(simulate.__globals__["_as_config"](_study({"mode": "none"})), None, None,
               False, False)
    run.prepare()

    def broken(_task: Any) -> Any:
        raise RuntimeError("disk full")

    with pytest.raises(FedcareError) as err:
        run._single_site_study("local-site-2", InMemoryTransport({"site-2": broken}),
                               "site-2", 1)

    assert "local-only baseline of site site-2 failed" in err.value.message
    assert "disk full" in err.value.message
