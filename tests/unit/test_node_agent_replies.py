"""A node answers a task the hub asks again (same payload digest) with the reply it already
computed, and forgets a reply the hub refused. The hub is replaced by a scripted link here;
tests/integration/test_network.py runs the same over real processes and mutual TLS."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from fedcare.core.errors import FedcareError
from fedcare.hub.provisioning import create_federation
from fedcare.node.agent import NodeAgent
from fedcare.node.hub_link import HubResponse
from tests.unit.helpers import with_permissive_policy

STUDY = "s1"


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fed")
    create_federation(root / "fed", hub_host="127.0.0.1", hub_port=1, sites=["alpha"],
                      site_kits=root / "kits")
    return root / "kits" / "alpha"


@pytest.fixture
def agent(kit: Path, tmp_path: Path) -> Iterator[NodeAgent]:
    (tmp_path / "d.csv").write_text("a,label\n1,0\n")
    conf = tmp_path / "node.toml"
    conf.write_text('[datasets.x]\npath = "d.csv"\n[approval]\nstudies = "any"\n')
    with_permissive_policy(conf)
    node = NodeAgent(kit, conf, state_dir=tmp_path / "state")
    yield node
    node.close()


def _computing(agent: NodeAgent) -> list[bytes]:
    """Make ``handle`` count its calls and answer with the task id."""
    calls: list[bytes] = []

    def handle(study_id: str, payload: bytes) -> tuple[str, bytes]:
        calls.append(payload)
        return payload.decode(), f"reply {len(calls)}".encode()

    agent.handle = handle  # type: ignore[method-assign]
    return calls


def test_the_same_task_again_gets_the_same_reply_without_computing_it(
        agent: NodeAgent) -> None:
    calls = _computing(agent)
    first = agent.answer(STUDY, b"t1", "digest-1")
    assert agent.answer(STUDY, b"t1", "digest-1") == first  # the hub restarted and asks again
    assert len(calls) == 1
    second = agent.answer(STUDY, b"t2", "digest-2")  # another task: computed
    assert second != first and len(calls) == 2
    assert agent.answer(STUDY, b"t1", "digest-1") != first  # only the last reply is kept
    assert len(calls) == 3


class _ScriptedHub:
    """Answers the node's requests from a script: (method, path prefix) -> response."""

    def __init__(self, agent: NodeAgent, script: list[tuple[str, HubResponse]]) -> None:
        self.agent, self.script, self.seen = agent, script, []

    def request(self, method: str, path: str, **kw: object) -> HubResponse:
        self.seen.append(f"{method} {path}")
        if not self.script:
            self.agent.stop_event.set()
            return HubResponse(204, {}, b"")
        expected, response = self.script.pop(0)
        assert f"{method} {path}".startswith(expected), (expected, method, path)
        return response

    def close(self) -> None:
        pass


def _task(body: bytes) -> HubResponse:
    from fedcare.core.wire import DIGEST_HEADER, payload_digest

    return HubResponse(200, {DIGEST_HEADER: payload_digest(body), "X-Fedcare-Study": STUDY},
                       body)


def test_a_refused_reply_is_not_reused_for_the_task_asked_again(
        agent: NodeAgent, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _computing(agent)
    monkeypatch.setattr(agent.stop_event, "wait", lambda timeout=None: False)  # no backoff
    refused = HubResponse(422, {}, b'{"detail": "update holds NaN"}')
    agent.http = _ScriptedHub(agent, [  # type: ignore[assignment]
        ("POST /v1/node/hello", HubResponse(200, {}, b"{}")),
        ("GET /v1/node/task", _task(b"t1")),
        ("POST /v1/node/reply", refused),
        ("GET /v1/node/task", _task(b"t1")),  # re-delivered after its lease ran out
        ("POST /v1/node/reply", HubResponse(202, {}, b"{}")),
        ("GET /v1/node/task", _task(b"t1")),  # the hub restarted and asks once more
        ("POST /v1/node/reply", HubResponse(202, {}, b"{}")),
    ])
    agent.run(max_seconds=30)
    assert len(calls) == 2  # computed again after the refusal, then resent as it was
    assert agent.http.script == []  # type: ignore[attr-defined]


def test_refusal_messages_name_the_hubs_reason() -> None:
    from fedcare.node.agent import _raise_for

    with pytest.raises(FedcareError, match="update holds NaN"):
        _raise_for(HubResponse(422, {}, b'{"detail": "update holds NaN"}'))


def test_a_task_header_is_parsed_once_at_the_node(agent: NodeAgent,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The node reads a task's header to route it and hands the parsed message to the
    executor, which decodes it without unframing it again (review P3: one parse per side)."""
    import numpy as np

    from fedcare.core import wire
    from fedcare.core.messages import Task, TaskKind, TrainConfig
    from fedcare.core.params import Parameters
    from fedcare.node.agent import _Study

    payload = wire.encode_task(Task(
        task_id="s/r1/evaluate/alpha", study="s", round=1, site="alpha",
        kind=TaskKind.EVALUATE,
        parameters=Parameters({"w": np.zeros(2, dtype=np.float32)}), train=TrainConfig(), aux={},
        seed=0, evaluate=True, strategy="fedavg", meta={}))
    seen: list[object] = []

    class Executor:
        def handle(self, message: object) -> bytes:
            seen.append(message)
            wire.decode_task(message)  # type: ignore[arg-type]
            return b"reply"

    agent._studies["s"] = _Study(None, "", Executor(), None)  # type: ignore[arg-type]
    parses = []
    real = wire.unframe

    def counting(*args: object, **kwargs: object) -> object:
        parses.append(1)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(wire, "unframe", counting)
    assert agent.handle("s", payload) == ("s/r1/evaluate/alpha", b"reply")
    assert isinstance(seen[0], wire.Framed)
    assert len(parses) == 1
