"""Following a networked study as a researcher does (first-use item 13): `fedcare study list`,
`fedcare sites`, metrics per round in `study status`, the results table after `submit --wait`,
the credential from the environment, and a report that says when the study was created and
how long it took. One real hub and real nodes on loopback (see tests/integration/network.py).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import yaml

from tests.integration.network import SITES, NetFederation, study_config
from tests.integration.network import net_fixture as net_fixture  # the "net" fixture

Net = Callable[..., NetFederation]


def _fedcare(fed: NetFederation, *args: str, env: dict[str, str] | None = None,
             timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    """``fedcare ARGS`` with only the environment this test gives it for the federation."""
    base = {k: v for k, v in os.environ.items()
            if k not in ("FEDCARE_FEDERATION", "FEDCARE_TOKEN")}
    return subprocess.run([sys.executable, "-m", "fedcare.cli.main", *args],
                          capture_output=True, text=True, timeout=timeout, cwd=fed.root,
                          env={**base, "NO_COLOR": "1", "COLUMNS": "200", **(env or {})})


def test_a_researcher_follows_a_study_from_the_command_line(net: Net, tmp_path: Path) -> None:
    fed = net().start()
    researcher = fed.researcher_dir
    # The hub says where it listens.
    assert re.search(r"hub listening on https://127\.0\.0\.1:\d+", fed.hub.tail() if fed.hub
                     else ""), fed.logs()

    # FEDCARE_FEDERATION stands for --federation; the token comes from FEDCARE_TOKEN (here a
    # wrong one is refused, so the variable is really what is used).
    env = {"FEDCARE_FEDERATION": str(researcher)}
    wrong = _fedcare(fed, "study", "list", env={**env, "FEDCARE_TOKEN": "not-the-token"})
    assert wrong.returncode == 2 and "401" in wrong.stderr + wrong.stdout
    env["FEDCARE_TOKEN"] = (researcher / "researcher.token").read_text().strip()
    empty = _fedcare(fed, "study", "list", env=env)
    assert empty.returncode == 0 and "no studies yet" in empty.stdout

    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump(study_config(name="follow-me", rounds=2)))
    done = _fedcare(fed, "study", "submit", str(study), "--wait", env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    study_id = re.search(r"study (\S+) submitted", done.stdout).group(1)  # type: ignore[union-attr]
    # The rounds table at the end: every site and the federation, the primary metric; the
    # files leave through the airlock.
    assert "accuracy" in done.stdout and "all" in done.stdout
    assert "fedcare export request" in done.stdout
    for site in SITES:
        assert site in done.stdout.split("submitted")[-1]

    listed = _fedcare(fed, "study", "list", env=env)
    assert listed.returncode == 0, listed.stdout + listed.stderr
    row = next(line for line in listed.stdout.splitlines() if study_id in line)
    assert "follow-me" in row and "completed" in row and "2/2" in row
    assert re.search(r"20\d\d-\d\d-\d\dT", row)  # created

    status = _fedcare(fed, "study", "status", study_id, env=env)
    assert status.returncode == 0, status.stdout + status.stderr
    assert "accuracy" in status.stdout and all(s in status.stdout for s in SITES)
    rounds = [line for line in status.stdout.splitlines()
              if re.match(r"\W*[12]\W", line)]
    assert len(rounds) == 2, status.stdout
    for line in rounds:  # the federation's and each site's accuracy, every round
        assert len(re.findall(r"\b[01]\.\d{3}\b", line)) >= 1 + len(SITES), status.stdout

    sites = _fedcare(fed, "sites", "--json", env=env)
    assert sites.returncode == 0, sites.stdout + sites.stderr
    by_name = {s["name"]: s for s in json.loads(sites.stdout)}
    assert set(by_name) == set(SITES)
    assert all(s["online"] for s in by_name.values())
    assert all(s["datasets"] and s["datasets"][0]["rows"] > 0 for s in by_name.values())
    table = _fedcare(fed, "sites", env=env)
    assert table.returncode == 0 and table.stdout.count("yes") >= len(SITES)

    # The networked report says when the study was created and how long it took.
    history = json.loads(fed.artifact(study_id, "history.json"))
    assert re.match(r"20\d\d-\d\d-\d\dT", history["created"])
    assert history["timing"]["total_seconds"] > 0
    report = fed.artifact(study_id, "report.html").decode()
    assert re.search(r"<dt>Created</dt><dd>20\d\d-", report)
    assert re.search(r"<dt>Total time</dt><dd>\d[\d.]* s</dd>", report)
