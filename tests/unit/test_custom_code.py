"""A study's own model module (model ``custom``): read into the study and hashed, trained only
in the sandbox, every output checked; hostile modules fail with the sandbox's status and a
clear message, and the same process then still trains a good study.

The sandbox tests skip where the kernel cannot build the sandbox (as
``test_governance_sandbox`` does), unless FEDCARE_REQUIRE_SANDBOX=1."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedcare.config import content_hash, load_config, parse_config
from fedcare.core.dataset import TaskType
from fedcare.core.errors import ConfigError, ValidationError
from fedcare.core.messages import TrainConfig
from fedcare.core.params import Parameters
from fedcare.engine.custom_learner import (
    CodeRun,
    CustomCodeLearner,
    SiteCodeSettings,
    StudyCodeError,
)
from fedcare.engine.learner_factory import ModelShape, learner_for
from fedcare.governance.sandbox import Status, run_untrusted
from fedcare.learners.options import MAX_CODE_BYTES, model_options

EXAMPLE = Path(__file__).parents[2] / "examples" / "custom_model"
GOOD = (EXAMPLE / "model.py").read_text()
SHAPE = ModelShape((4,), TaskType.BINARY, 2)
TRAIN = TrainConfig(local_epochs=3, batch_size=16, lr=0.3)
#: Tight limits keep the hostile runs short.
TIGHT = {"cpu_seconds": 2, "wall_seconds": 10, "memory_mb": 1024}

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="the sandbox uses Linux namespaces and Landlock")


def _data(n: int = 240, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype(np.float32)
    y = (x[:, 0] - 0.5 * x[:, 1] > 0).astype(np.int64)
    return x, y


def _learner(source: str, runs: list[CodeRun] | None = None, *, allow_weaker: bool = False,
             **options: Any) -> CustomCodeLearner:
    opts = model_options("custom", {"source": source, "params": 5, **TIGHT, **options})
    site = SiteCodeSettings(on_run=runs.append if runs is not None else None,
                            allow_weaker=allow_weaker)
    learner = learner_for(opts, SHAPE, seed=1, code=site)
    assert isinstance(learner, CustomCodeLearner)
    return learner


@pytest.fixture(scope="module")
def sandbox_works() -> None:
    probe = run_untrusted("import numpy as np\ndef run(i):\n    return {'y': i['x']}\n",
                          {"x": np.zeros(2)})
    if probe.status is Status.UNAVAILABLE and os.environ.get("FEDCARE_REQUIRE_SANDBOX") != "1":
        pytest.skip(f"the sandbox cannot be set up on this machine: {probe.reason}")


def _good_still_trains() -> None:
    """After whatever came before, this process still trains a good study to well above
    chance (the learner of a fresh study, as a node builds for its next study)."""
    learner = _learner(GOOD)
    x, y = _data()
    params = learner.initial_parameters()
    for round_ in range(3):
        params = learner.fit(params, x[:180], y[:180], TRAIN, seed=round_).parameters
    metrics = learner.evaluate(params, x[180:], y[180:])
    assert metrics["accuracy"] > 0.85, metrics


# --- the good path ------------------------------------------------------------------------------
@linux_only
@pytest.mark.usefixtures("sandbox_works")
def test_a_good_module_learns_well_above_chance_and_reports_its_runs() -> None:
    runs: list[CodeRun] = []
    learner = _learner(GOOD, runs)
    x, y = _data()
    start = learner.initial_parameters()
    before = learner.evaluate(start, x[180:], y[180:])
    fit = learner.fit(start, x[:180], y[:180], TRAIN, seed=0)
    after = learner.evaluate(fit.parameters, x[180:], y[180:])
    assert before["accuracy"] < 0.7 < 0.85 < after["accuracy"], (before, after)
    assert fit.num_examples == 180 and fit.num_steps == 3 * 12
    assert 0 < fit.metrics["train_loss"] < np.log(2)
    assert fit.parameters.spec == start.spec and fit.parameters["params"].dtype == np.float64
    assert [(r.op, r.status) for r in runs] == [("scores", "ok"), ("fit", "ok"),
                                                ("scores", "ok")]


@linux_only
@pytest.mark.usefixtures("sandbox_works")
def test_fedprox_mu_reaches_the_module() -> None:
    learner = _learner(GOOD)
    x, y = _data()
    start = Parameters({"params": np.full(5, 3.0)})
    free = learner.fit(start, x, y, TRAIN, seed=0).parameters["params"]
    held = learner.fit(start, x, y, TrainConfig(local_epochs=3, batch_size=16, lr=0.3,
                                                proximal_mu=5.0), seed=0).parameters["params"]
    assert np.linalg.norm(held - 3.0) < np.linalg.norm(free - 3.0)


def test_initial_weights_are_fedcares_own_and_the_hub_runs_no_code() -> None:
    """Building the learner (what the hub does for the layout) runs nothing: a module that
    would fail on import still gives initial weights."""
    zeros = _learner("raise SystemExit('never imported')").initial_parameters()
    np.testing.assert_array_equal(zeros["params"], np.zeros(5))
    drawn = _learner("x", init_std=0.1).initial_parameters()["params"]
    again = _learner("x", init_std=0.1).initial_parameters()["params"]
    np.testing.assert_array_equal(drawn, again)
    assert drawn.std() > 0


def test_parameters_of_another_layout_are_refused_before_anything_runs() -> None:
    learner = _learner("raise SystemExit")
    x, y = _data(8)
    with pytest.raises(ValidationError):
        learner.fit(Parameters({"params": np.zeros(6)}), x, y, TRAIN, seed=0)


# --- hostile modules ----------------------------------------------------------------------------
@pytest.fixture()
def site_key(tmp_path: Path) -> Path:
    """A real site kit's private key, made as a federation provisions it."""
    from fedcare.hub.provisioning import create_federation

    create_federation(tmp_path / "fed", hub_host="127.0.0.1", hub_port=8443, sites=["alpha"],
                      site_kits=tmp_path / "kits")
    key = tmp_path / "kits" / "alpha" / "site.key"
    assert b"PRIVATE KEY" in key.read_bytes()
    return key


def _fails(source: str, status: str, *, op: str = "fit", **options: Any) -> StudyCodeError:
    runs: list[CodeRun] = []
    learner = _learner(source, runs, **options)
    x, y = _data(32)
    with pytest.raises(StudyCodeError) as info:
        if op == "fit":
            learner.fit(learner.initial_parameters(), x, y, TRAIN, seed=0)
        else:
            learner.evaluate(learner.initial_parameters(), x, y)
    assert runs and runs[-1].status == status and runs[-1].op == op, runs
    assert f"{op}()" in str(info.value)
    assert status in str(info.value), str(info.value)
    return info.value


@linux_only
@pytest.mark.usefixtures("sandbox_works")
def test_reading_the_nodes_real_key_fails_and_the_key_goes_nowhere(site_key: Path) -> None:
    code = f"""
import numpy as np

def fit(inputs):
    data = open({str(site_key)!r}, "rb").read()
    return {{"params": np.frombuffer(data[:40], dtype=np.float64)}}
"""
    error = _fails(code, "error")
    assert "PRIVATE KEY" not in str(error) and "No such file" not in str(error)
    _good_still_trains()


@linux_only
@pytest.mark.usefixtures("sandbox_works")
def test_a_module_cannot_reach_a_listening_loopback_port() -> None:
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    code = f"""
import socket

def fit(inputs):
    socket.create_connection(("127.0.0.1", {port}), timeout=2).sendall(b"rows")
    return {{"params": inputs["params"]}}
"""
    try:
        _fails(code, "error")
        server.setblocking(False)
        with pytest.raises(BlockingIOError):  # nothing ever connected
            server.accept()
    finally:
        server.close()
    _good_still_trains()


@linux_only
@pytest.mark.usefixtures("sandbox_works")
def test_a_fork_bomb_is_stopped() -> None:
    code = """
import os

def fit(inputs):
    while True:
        try:
            os.fork()
        except OSError:
            pass
"""
    runs: list[CodeRun] = []
    learner = _learner(code, runs, cpu_seconds=1, wall_seconds=4)
    x, y = _data(16)
    with pytest.raises(StudyCodeError, match=r"fit\(\) ended with status (cpu_limit|timeout)"):
        learner.fit(learner.initial_parameters(), x, y, TRAIN, seed=0)
    assert runs[-1].status in ("cpu_limit", "timeout")
    _good_still_trains()


@linux_only
@pytest.mark.usefixtures("sandbox_works")
def test_a_50_gb_allocation_is_a_memory_limit() -> None:
    code = """
import numpy as np

def fit(inputs):
    big = np.ones(50 * 2**30 // 8)
    return {"params": inputs["params"] + big[:5]}
"""
    error = _fails(code, "memory_limit")
    assert "out of memory" in str(error)
    _good_still_trains()


@linux_only
@pytest.mark.usefixtures("sandbox_works")
def test_an_infinite_loop_is_a_cpu_limit() -> None:
    _fails("def fit(inputs):\n    while True:\n        pass\n", "cpu_limit", cpu_seconds=1)
    _good_still_trains()


@linux_only
@pytest.mark.usefixtures("sandbox_works")
def test_a_sleeping_module_is_a_timeout() -> None:
    _fails("import time\ndef fit(inputs):\n    time.sleep(60)\n", "timeout", wall_seconds=1.5)
    _good_still_trains()


BAD_OUTPUTS = [
    ("def fit(inputs):\n    return {'params': inputs['params'][:3]}\n",
     "fit", "shape (3,), expected (5,)"),
    ("import numpy as np\ndef fit(inputs):\n    return {'params': inputs['params'] * np.nan}\n",
     "fit", "NaN or infinite"),
    ("def fit(inputs):\n    return {'params': inputs['params'].astype('int64')}\n",
     "fit", "expected a float array"),
    ("def fit(inputs):\n    return {'params': inputs['params'], 'x_copy': inputs['x']}\n",
     "fit", "unexpected arrays ['x_copy']"),
    ("def fit(inputs):\n    return {}\n", "fit", "no 'params'"),
    ("def fit(inputs):\n    return {'params': inputs['params'], 'train_loss': inputs['x']}\n",
     "fit", "train_loss must be one number"),
    ("import numpy as np\ndef scores(inputs):\n    return {'scores': np.zeros((3, 1))}\n",
     "scores", "shape (3, 1), expected (32, 1)"),
    ("import numpy as np\ndef scores(inputs):\n"
     "    return {'scores': np.full((len(inputs['x']), 1), np.inf)}\n",
     "scores", "NaN or infinite"),
]


@linux_only
@pytest.mark.usefixtures("sandbox_works")
@pytest.mark.parametrize(("code", "op", "message"), BAD_OUTPUTS)
def test_wrong_outputs_are_refused_with_what_was_wrong(code: str, op: str, message: str) -> None:
    error = _fails(code, "refused_output", op=op)
    assert message in str(error)
    _good_still_trains()


@linux_only
@pytest.mark.usefixtures("sandbox_works")
@pytest.mark.parametrize(("code", "status"), [
    # A pickled object cannot leave the sandbox: outputs are .npy files without pickle.
    ("import numpy as np\ndef fit(inputs):\n"
     "    return {'params': np.array([object()] * 5, dtype=object)}\n", "bad_result"),
    ("def fit(inputs):\n    return inputs['params'].tolist()\n", "bad_result"),
    ("def fit(inputs):\n    raise RuntimeError('patient 4711 has value 13.2')\n", "error"),
    ("def scores(inputs) oops\n", "error"),
])
def test_failed_runs_name_the_status_but_not_the_codes_stderr(code: str, status: str) -> None:
    error = _fails(code, status)
    assert "4711" not in str(error) and "Traceback" not in str(error)
    _good_still_trains()


# --- the study file -----------------------------------------------------------------------------
def _study(folder: Path, code: str | bytes, **model: Any) -> Path:
    (folder / "m.py").write_bytes(code.encode() if isinstance(code, str) else code)
    extra = "".join(f"{k} = {v!r}\n" for k, v in model.items())
    (folder / "study.toml").write_text('[data]\nsource = "builtin"\n[model]\nname = "custom"\n'
                                       f'code = "m.py"\nparams = 31\n{extra}')
    return folder / "study.toml"


def test_the_module_text_travels_in_the_study_and_one_byte_changes_the_hash(
        tmp_path: Path) -> None:
    cfg = load_config(_study(tmp_path, GOOD))
    assert cfg.model.source == GOOD  # type: ignore[union-attr]
    # What the hub and the sites receive (the JSON dump) parses without the file, same hash.
    again = parse_config(cfg.model_dump(mode="json"))
    assert content_hash(again) == content_hash(cfg)
    changed = load_config(_study(tmp_path, GOOD.replace("1e-300", "2e-300")))
    assert content_hash(changed) != content_hash(cfg)


def test_the_example_study_reads_its_module() -> None:
    cfg = load_config(EXAMPLE / "study.toml")
    assert cfg.model.source == GOOD  # type: ignore[union-attr]


@pytest.mark.parametrize(("code", "message"), [
    (b"x" * (MAX_CODE_BYTES + 1), "at most 262144 bytes"),
    (b"\xff\xfe not text", "not UTF-8"),
    (b"  \n", "is empty"),
])
def test_a_module_that_cannot_be_shipped_is_refused(tmp_path: Path, code: bytes,
                                                    message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(_study(tmp_path, code))


def test_a_missing_module_and_a_study_without_one_are_refused(tmp_path: Path) -> None:
    path = _study(tmp_path, GOOD)
    (tmp_path / "m.py").unlink()
    with pytest.raises(ConfigError, match=r"m\.py does not exist"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"needs model\.code"):
        parse_config({"data": {"source": "builtin"}, "model": {"name": "custom"}})
    with pytest.raises(ConfigError, match="was not read"):
        parse_config({"data": {"source": "builtin"},
                      "model": {"name": "custom", "code": "m.py"}})


@pytest.mark.parametrize(("options", "message"), [
    ({"params": 2**24 + 1}, "model option params"),
    ({"cpu_seconds": 3601}, "model option cpu_seconds"),
    ({"wall_seconds": 7201}, "model option wall_seconds"),
    ({"memory_mb": 65537}, "model option memory_mb"),
])
def test_every_limit_is_bounded(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        model_options("custom", {"source": GOOD, **options})


@pytest.mark.parametrize(("section", "message"), [
    ({"strategy": {"name": "scaffold"}}, "strategy scaffold corrects each local gradient"),
    ({"train": {"optimizer": "adam"}}, "no optimizer or schedule"),
    ({"privacy": {"mode": "dp_sgd", "noise_multiplier": 1.0}}, "dp_sgd needs model.name"),
])
def test_strategies_and_options_the_module_cannot_honour_are_refused(
        section: dict[str, Any], message: str) -> None:
    raw: dict[str, Any] = {"data": {"source": "builtin", "standardize": False},
                           "model": {"name": "custom", "source": GOOD, "params": 31}, **section}
    with pytest.raises(ConfigError, match=message):
        parse_config(raw)


def test_fedprox_site_level_dp_and_secure_aggregation_are_accepted() -> None:
    parse_config({"data": {"source": "builtin", "sites": 3, "standardize": False},
                  "model": {"name": "custom", "source": GOOD, "params": 31},
                  "strategy": {"name": "fedprox", "mu": 0.1},
                  "privacy": {"mode": "dp_fedavg_distributed", "noise_multiplier": 0.5},
                  "secure_aggregation": {"protocol": "secagg"}})


def test_the_site_policy_sees_a_custom_code_study_as_custom_code() -> None:
    from fedcare.governance.site_policy import StudyRequest

    cfg = parse_config({"data": {"source": "builtin"},
                        "model": {"name": "custom", "source": GOOD, "params": 31}})
    assert StudyRequest.from_config(cfg).custom_code
    plain = parse_config({"data": {"source": "builtin"}})
    assert not StudyRequest.from_config(plain).custom_code


@linux_only
@pytest.mark.usefixtures("sandbox_works")
def test_the_module_is_never_imported_into_this_process() -> None:
    learner = _learner(GOOD + "\nimport sys\nsys.modules['fedcare_marker'] = sys\n")
    x, y = _data(16)
    learner.fit(learner.initial_parameters(), x, y, TRAIN, seed=0)
    assert "fedcare_marker" not in sys.modules
    assert not any("fedcare_study_code" in name for name in sys.modules)


def test_the_node_writes_each_failed_run_to_its_signed_log(site_key: Path,
                                                            tmp_path: Path) -> None:
    from fedcare.governance.audit_log import EventKind, read, verify
    from fedcare.node.agent import NodeAgent
    from fedcare.node.audit import node_log_and_keys

    kit = site_key.parent
    (tmp_path / "d.csv").write_text("a,label\n1,0\n")
    conf = tmp_path / "node.toml"
    conf.write_text('[datasets.x]\npath = "d.csv"\n[approval]\nstudies = "any"\n')
    agent = NodeAgent(kit, conf, state_dir=tmp_path / "state")
    try:
        assert not agent._code_settings("study-1").allow_weaker  # the strict default
        observe = agent._code_settings("study-1").on_run
        assert observe is not None
        observe(CodeRun("fit", "ok", "ran", 0.2))
        observe(CodeRun("fit", "memory_limit", "ran out of memory (limit 1 bytes)", 0.5))
        observe(CodeRun("scores", "refused_output", "scores() returned NaN", 0.0))
    finally:
        agent.close()
    path, keys = node_log_and_keys(kit, tmp_path / "state")
    assert verify(path, keys).ok
    failed = [e for e in read(path) if e.kind is EventKind.STUDY_CODE_FAILED]
    assert [(e.subject, e.details["function"], e.details["status"]) for e in failed] == [
        ("study-1", "fit", "memory_limit"), ("study-1", "scores", "refused_output")]


@linux_only
@pytest.mark.usefixtures("sandbox_works")
def test_a_node_that_is_not_root_refuses_unless_its_config_allows_the_weaker_sandbox(
        monkeypatch: pytest.MonkeyPatch, site_key: Path) -> None:
    from fedcare.governance import sandbox

    monkeypatch.setattr(sandbox, "_privileged", lambda: False)
    error = _fails(GOOD, "unavailable")
    assert "nothing ran" in str(error) or "allow_weaker" in str(error)
    # The site allowed it: the weaker sandbox still hides the key and trains.
    reads = f"""
import numpy as np
{GOOD}
def fit(inputs, _fit=fit):
    try:
        open({str(site_key)!r}, "rb").read()
    except OSError:
        return _fit(inputs)
    return {{"params": inputs["params"] * 0 + 99.0}}
"""
    learner = _learner(reads, allow_weaker=True)
    x, y = _data()
    fit = learner.fit(learner.initial_parameters(), x, y, TRAIN, seed=0)
    assert not np.any(fit.parameters["params"] == 99.0)
    assert learner.evaluate(fit.parameters, x, y)["accuracy"] > 0.85


def test_the_weaker_sandbox_is_the_sites_choice_in_its_node_config(tmp_path: Path) -> None:
    from fedcare.node.local_config import load_node_data

    (tmp_path / "d.csv").write_text("a,label\n1,0\n")
    conf = tmp_path / "node.toml"
    conf.write_text('[datasets.x]\npath = "d.csv"\n')
    assert not load_node_data(conf).sandbox_allow_weaker
    conf.write_text('[datasets.x]\npath = "d.csv"\n[sandbox]\nallow_weaker = true\n')
    assert load_node_data(conf).sandbox_allow_weaker
