"""A study that ships its own model module, over real HTTPS with real node processes: the
module trains at each site only in the sandbox; a hostile module (it reads the node's real
``site.key``) fails at every site, the researcher sees each site's error with the sandbox
status, the sites' audit logs record the failed runs, and the same nodes then serve a good
study to the end."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from fedcare.config import content_hash, load_config
from fedcare.governance.audit_log import EventKind, read
from tests.integration.network import FEATURES, NetFederation, study_config
from tests.integration.network import net_fixture as net_fixture  # the "net" fixture
from tests.sandbox import skip_unless_sandbox

Net = Callable[..., NetFederation]
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not sys.platform.startswith("linux"),
                                 reason="the sandbox uses Linux namespaces and Landlock")]
SITES = ("alpha", "beta")
GOOD = (Path(__file__).parents[2] / "examples" / "custom_model" / "model.py").read_text()


@pytest.fixture(autouse=True, scope="module")
def _sandbox_available() -> None:
    skip_unless_sandbox()


def _custom_study(folder: Path, code: str, name: str) -> tuple[dict[str, Any], str]:
    """The study as a researcher writes it (a TOML file naming its module beside it), read as
    ``fedcare study submit`` reads it: (the JSON sent to the hub, its content hash)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.py").write_text(code)
    cfg = study_config(name=name, rounds=3, model={
        "name": "custom", "code": "model.py", "params": len(FEATURES) + 1,
        "cpu_seconds": 10, "wall_seconds": 20, "memory_mb": 1024})
    lines = []
    for section, values in cfg.items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in values.items()]
    (folder / "study.toml").write_text("\n".join(lines) + "\n")
    loaded = load_config(folder / "study.toml")
    return loaded.model_dump(mode="json"), content_hash(loaded)


def _code_failures(fed: NetFederation, site: str) -> list[dict[str, Any]]:
    log = fed.root / "state" / site / "audit.jsonl"
    if not log.is_file():
        return []
    return [dict(e.details) for e in read(log) if e.kind is EventKind.STUDY_CODE_FAILED]


def test_a_custom_code_study_trains_over_https_and_a_hostile_one_fails_safely(
        net: Net, tmp_path: Path) -> None:
    fed = net(sites=SITES).start()

    # A hostile module: it reads the node's real private key (its kit on this machine).
    key = fed.kit("alpha") / "site.key"
    assert b"PRIVATE KEY" in key.read_bytes()
    hostile = f"""
import numpy as np

def fit(inputs):
    data = open({str(key)!r}, "rb").read()
    return {{"params": np.frombuffer(data[:72], dtype=np.float64)}}

def scores(inputs):
    return {{"scores": np.zeros((len(inputs["x"]), 1))}}
"""
    bad_cfg, _ = _custom_study(tmp_path / "hostile", hostile, "hostile")
    good_cfg, good_hash = _custom_study(tmp_path / "good", GOOD, "good")
    # Both at once: the nodes serve the good study while the hostile one fails beside it.
    good_id = fed.submit(good_cfg)
    bad = fed.wait_study(fed.submit(bad_cfg))
    assert bad["status"] == "failed", bad
    failed = bad["rounds"][0]["sites_failed"] if bad["rounds"] else {}
    text = json.dumps(failed) + str(bad.get("error")) + json.dumps(fed.events(bad["study_id"]))
    for site in SITES:
        assert site in text, text
    assert "StudyCodeError" in text and "status error" in text, text
    assert "PRIVATE KEY" not in text

    st = fed.wait_study(good_id)
    assert st["status"] == "completed", st
    assert st["config_hash"] == good_hash
    assert all(fed.nodes[s].alive() for s in SITES)
    for r in st["rounds"]:
        assert r["sites_completed"] == list(SITES) and not r["sites_failed"], r
    history = json.loads(fed.artifact(st["study_id"], "history.json"))
    final = history["rounds"][-1]
    accuracy = [m["accuracy"] for m in final["site_metrics"].values()] if "site_metrics" in \
        final else [final["metrics"]["accuracy"]]
    assert min(accuracy) > 0.85, final

    # Each site's signed log holds the hostile study's failed runs, and none of the good one.
    for site in SITES:
        runs = _code_failures(fed, site)
        assert runs and all(r["study"] == bad["study_id"] for r in runs), runs
        assert {r["status"] for r in runs} == {"error"} and runs[0]["function"] == "fit"
        verdict = fed.cli("audit", "verify", "--node-dir", str(fed.kit(site)),
                          "--state-dir", str(fed.root / "state" / site))
        assert verdict.returncode == 0, verdict.stdout + verdict.stderr
