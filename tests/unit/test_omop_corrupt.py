"""A corrupted OMOP export (audit finding F15, ``data_corrupt.sh``'s two OMOP cases and
``expG2.py``): ``measurement.csv`` cut mid-row, or 5 KB of random bytes appended.

``fedcare data check`` used to exit 1 with a DuckDB traceback, and ``fedcare node start`` died
at startup on the same exception. Now the adapter raises a DataError naming the file, the CLI
prints it on one line and exits 2, and the node reports the dataset as unusable in its hello
and keeps serving its other datasets.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from fedcare.cli.main import app
from fedcare.core.errors import DataError
from fedcare.data.adapters.omop import load_omop
from fedcare.demo.hospitals import write_hospitals
from fedcare.hub.provisioning import create_federation
from fedcare.node.agent import NodeAgent
from fedcare.node.hub_link import HubResponse
from tests.unit.helpers import with_permissive_policy

SITE = "hospital-2"  # the demo hospital that exports OMOP


def _cut(data: bytes) -> bytes:
    return data[:500_000]  # as the audit did: mid-row in a ~1 MB file


def _garbage(data: bytes) -> bytes:
    return data + random.Random(15).randbytes(5000)


def _long_then_garbage(data: bytes) -> bytes:
    """Eight times the rows, then the garbage: DuckDB detects the layout from the start of
    the file, so here the error comes only when every row is read."""
    head, rows = data.split(b"\n", 1)
    return head + b"\n" + rows * 8 + random.Random(15).randbytes(5000)


CORRUPTIONS: dict[str, Callable[[bytes], bytes]] = {
    "truncated mid-row": _cut, "5 KB of random bytes appended": _garbage,
    "garbage after many good rows": _long_then_garbage}


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    contract, sites = write_hospitals(tmp_path_factory.mktemp("demo"))
    return contract, next(s for s in sites if s.name == SITE)


@pytest.fixture(params=sorted(CORRUPTIONS))
def corrupted(request: pytest.FixtureRequest, demo: tuple[Path, Any]) -> Iterator[Path]:
    """The demo OMOP export with measurement.csv corrupted (restored afterwards)."""
    measurement = demo[1].source.parent.parent.parent / "exports" / SITE / "omop" / \
        "measurement.csv"
    good = measurement.read_bytes()
    measurement.write_bytes(CORRUPTIONS[request.param](good))
    try:
        yield measurement
    finally:
        measurement.write_bytes(good)


def test_the_adapter_names_the_file_and_the_problem(corrupted: Path) -> None:
    with pytest.raises(DataError) as caught:
        load_omop(corrupted.parent)

    message = str(caught.value)
    assert f"OMOP table measurement ({corrupted}) cannot be read" in message
    assert "\n" not in message and len(message) < 600
    # DuckDB quotes the offending row; a patient's record stays out of the message.
    assert "Original Line" not in message and "Possible fixes" not in message


def test_data_check_prints_one_line_and_exits_2(corrupted: Path,
                                                demo: tuple[Path, Any]) -> None:
    contract, site = demo
    res = CliRunner().invoke(app, ["data", "check", "--contract", str(contract),
                                   "--data", str(site.source)])

    assert res.exit_code == 2, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("error: OMOP table measurement") and str(corrupted) in lines[0]
    assert "Traceback" not in res.output


class _Hub:
    """Records the node's hello, then has no task for it (and stops it)."""

    def __init__(self, agent: NodeAgent) -> None:
        self.agent, self.hellos, self.polls = agent, [], 0

    def request(self, method: str, path: str, **kw: Any) -> HubResponse:
        if path == "/v1/node/hello":
            self.hellos.append(kw["json"])
            return HubResponse(200, {}, json.dumps({"site": SITE}).encode())
        assert path == "/v1/node/task", path
        self.polls += 1
        self.agent.stop_event.set()
        return HubResponse(204, {}, b"")

    def close(self) -> None:
        pass


def test_the_node_reports_the_dataset_unusable_and_keeps_serving(
        corrupted: Path, demo: tuple[Path, Any], tmp_path: Path) -> None:
    contract, site = demo
    create_federation(tmp_path / "fed", hub_host="127.0.0.1", hub_port=1, sites=[SITE],
                      site_kits=tmp_path / "kits")
    (tmp_path / "plain.csv").write_text("a,label\n1,0\n2,1\n3,0\n")
    conf = tmp_path / "node.toml"
    conf.write_text(f'[datasets.cardio]\nsource = "{site.source}"\ncontract = "{contract}"\n\n'
                    f'[datasets.plain]\npath = "plain.csv"\n\n[approval]\nstudies = "any"\n')
    with_permissive_policy(conf)
    agent = NodeAgent(tmp_path / "kits" / SITE, conf, state_dir=tmp_path / "state")
    hub = _Hub(agent)
    agent.http = hub  # type: ignore[assignment]
    try:
        agent.run(max_seconds=60)  # used to raise out of hello() at startup
    finally:
        agent.close()

    assert hub.polls == 1  # it went on to ask for work
    datasets = {d["name"]: d for d in hub.hellos[0]["datasets"]}
    digest = hashlib.sha256((tmp_path / "plain.csv").read_bytes()).hexdigest()
    assert datasets["plain"] == {"name": "plain", "rows": 3, "digest": digest}
    cardio = datasets["cardio"]
    assert cardio["rows"] == 0 and "DataError" in cardio["quality"]["error"]
    assert str(corrupted) not in json.dumps(hub.hellos)  # the detail stays in the site's log
