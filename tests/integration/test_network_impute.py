"""Missing values and categorical columns over a real hub and nodes (first-use item 9).

Each node holds a table with missing values, rows without a label and a text column. The
fill values and the level list come from the round-0 statistics exchange (through secure
aggregation in a secure study; level names only, rare ones suppressed), and are exactly what
the simulation of the same study over the same files computes.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest

from fedcare.data.prepare import array_text
from fedcare.sim.runner import simulate
from tests.integration.network import NetFederation, simulation_of, study_config
from tests.integration.network import net_fixture as net_fixture  # the "net" fixture

Net = Callable[..., NetFederation]
pytestmark = pytest.mark.slow

MIXED = "mixed"
FEATURES = ["age", "sbp", "smoking"]


def _frame(seed: int, n: int = 150, *, ids: bool = False) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    age = rng.normal(60, 10, n)
    smoking = rng.choice(["current", "former", "never"], n)
    logit = 0.15 * (age - 60) + 3.0 * (smoking == "current") - 1.0
    df = pd.DataFrame({"age": age, "sbp": rng.normal(130, 15, n), "smoking": smoking,
                       "y": (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(float)})
    df.loc[rng.random(n) < 0.1, "age"] = np.nan
    df.loc[rng.random(n) < 0.05, "smoking"] = None
    df.loc[:11, "y"] = np.nan  # 12 rows without a label
    df.loc[4:6, "smoking"] = "pipe"  # 3 rows: suppressed
    if ids:
        df["smoking"] = [f"P{i:05d}" for i in range(n)]
    return df


def _add_mixed(fed: NetFederation, *, ids_at: str | None = None) -> None:
    fed.tables[MIXED] = {}
    for i, (site, conf) in enumerate(fed.node_configs.items()):
        path = fed.root / "data" / f"{site}-{MIXED}.csv"
        _frame(i, ids=site == ids_at).to_csv(path, index=False)
        fed.tables[MIXED][site] = path
        text = conf.read_text().replace(
            "[approval]", f'[datasets.{MIXED}]\npath = "{path.name}"\n\n[approval]')
        conf.write_text(text)


def _study(name: str, **over: object) -> dict:
    return study_config(name=name, rounds=3, data={
        "dataset": MIXED, "label": "y", "features": FEATURES, "standardize": True,
        "impute": "mean", "categorical": ["smoking"], "max_levels": 6},
        train={"local_epochs": 3, "batch_size": 16, "lr": 0.1}, **over)


def _simulated(fed: NetFederation, cfg: dict) -> dict:
    sim = simulation_of(cfg, fed.tables, sorted(fed.sites))
    for key in ("impute", "categorical", "max_levels"):
        sim["data"][key] = cfg["data"][key]
    return dict(simulate(sim, output_dir=None).meta["normalizer"])


@pytest.mark.parametrize("protocol", ["none", "secagg"])
def test_a_networked_study_imputes_and_encodes_as_its_simulation_does(
        net: Net, protocol: str) -> None:
    fed = net()
    _add_mixed(fed)
    fed.start()
    cfg = _study(f"mixed-{protocol}", secure_aggregation={"protocol": protocol})
    st = fed.run_study(cfg, timeout=180)
    assert st["status"] == "completed", st
    history = json.loads(fed.artifact(st["study_id"], "history.json"))
    norm = history["normalizer"]
    expected = _simulated(fed, cfg)
    # Same fill values (secagg: fixed point, exact to ~2^-24 relative), same level list.
    np.testing.assert_allclose(norm["fill"], expected["fill"], rtol=1e-6)
    np.testing.assert_allclose(norm["mean"], expected["mean"], rtol=1e-5)
    np.testing.assert_allclose(norm["std"], expected["std"], rtol=1e-4)
    assert array_text(np.asarray(norm["levels"])) == {"smoking": ["current", "former", "never"]}
    assert array_text(np.asarray(norm["levels"])) == array_text(np.asarray(expected["levels"]))
    # Rows dropped for a missing label, by reason, rounded down to 10 at the hub.
    dropped = {row["name"]: row.get("rows_dropped") for row in history["sites"]}
    assert dropped == {site: {"missing label": 10} for site in fed.sites}, dropped
    final = history["final"]["global_metrics"]
    assert final["auc"] > 0.7, final


def test_a_site_whose_categorical_column_is_an_identifier_stops_the_study_clearly(
        net: Net) -> None:
    fed = net()
    _add_mixed(fed, ids_at=fed.sites[1])
    fed.start()
    st = fed.wait_study(fed.submit(_study("ids")), timeout=120)
    assert st["status"] == "failed", st
    assert "smoking" in st["error"] and "max_levels" in st["error"], st["error"]
