"""The site policy as a node and a simulated site apply it (fedcare.node.site_policy,
fedcare.engine.site_policy, fedcare.sim.site_policies): the file named in site.toml, fail
closed without it, refusals that name the rule but never the site's figures, metrics kept
at the site, rounds past the maximum refused, a steward's edit applied without a restart."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fedcare.config import parse_config
from fedcare.core.dataset import SiteData, TaskType
from fedcare.core.errors import ConfigError
from fedcare.core.messages import Task, TaskKind, Update, UpdateKind
from fedcare.core.params import Parameters
from fedcare.engine.executor import Refused
from fedcare.engine.site_policy import (
    ReleaseGate,
    planned_epsilon,
    site_facts,
    study_refusal,
    study_request,
)
from fedcare.governance.audit_log import EventKind, read
from fedcare.governance.site_policy import default_policy, load_policy, policy_toml
from fedcare.hub.provisioning import create_federation
from fedcare.node.audit import NodeAudit
from fedcare.node.local_config import load_node_data
from fedcare.node.site_policy import NodePolicy
from fedcare.sim.runner import simulate
from tests.unit.helpers import permissive_policy

#: A plain study (FedAvg, logreg, no DP, no secure aggregation) over 2 named features.
PLAIN = {"study": {"name": "plain", "rounds": 3},
         "data": {"source": "federation", "dataset": "x", "label": "y",
                  "features": ["a", "b"], "standardize": False},
         "model": {"name": "logreg"}, "strategy": {"name": "fedavg"}}
#: The same study under DP-FedAvg with secure aggregation, stating its epsilon.
PRIVATE = {**PLAIN, "privacy": {"mode": "dp_fedavg_distributed", "clip": 1.0,
                                "target_epsilon": 2.0},
           "secure_aggregation": {"protocol": "secagg"}}


def _site(rows: int = 300, positives: int = 100, name: str = "alpha") -> SiteData:
    y = np.zeros(rows, dtype=np.int64)
    y[:positives] = 1
    x = np.zeros((rows, 2), dtype=np.float32)
    cut = rows * 4 // 5
    return SiteData(name, x[:cut], y[:cut], x[cut:], y[cut:], ("a", "b"), TaskType.BINARY, 2)


def _policy_file(folder: Path, text: str, name: str = "site_policy.toml") -> Path:
    path = folder / name
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fed")
    create_federation(root / "fed", hub_host="127.0.0.1", hub_port=1, sites=["alpha"],
                      site_kits=root / "kits")
    return root / "kits" / "alpha"


def _node_policy(kit: Path, tmp_path: Path, path: Path | None) -> NodePolicy:
    audit = NodeAudit("alpha", kit / "site.key", tmp_path / "state")
    return NodePolicy(path, "alpha", tmp_path / "site.toml", audit)


def _audit(tmp_path: Path) -> list[object]:
    return list(read(tmp_path / "state" / "audit.jsonl"))


# -- site.toml ------------------------------------------------------------------------------
def test_site_toml_names_its_policy_relative_to_itself(tmp_path: Path) -> None:
    (tmp_path / "site.toml").write_text('[datasets.x]\npath = "d.csv"\n\n'
                                        '[policy]\nfile = "rules/site_policy.toml"\n')
    node = load_node_data(tmp_path / "site.toml")
    assert node.site_policy == (tmp_path / "rules" / "site_policy.toml").resolve()
    (tmp_path / "old.toml").write_text('[datasets.x]\npath = "d.csv"\n')
    assert load_node_data(tmp_path / "old.toml").site_policy is None


def test_a_policy_table_without_a_file_is_refused_naming_the_key(tmp_path: Path) -> None:
    (tmp_path / "site.toml").write_text('[datasets.x]\npath = "d.csv"\n[policy]\n')
    with pytest.raises(ConfigError, match=r"policy\.file"):
        load_node_data(tmp_path / "site.toml")


# -- fail closed ----------------------------------------------------------------------------
def test_a_site_toml_without_a_policy_refuses_every_study_saying_how_to_fix_it(
        kit: Path, tmp_path: Path) -> None:
    policy = _node_policy(kit, tmp_path, None)
    why = policy.refusal("s1", parse_config(PRIVATE), "h" * 64, _site(), 3, None)
    assert why is not None and "names no site policy" in why
    assert "[policy] file" in why and "fedcare node policy init" in why
    [entry] = _audit(tmp_path)
    assert entry.kind is EventKind.POLICY_REFUSED  # type: ignore[attr-defined]
    assert entry.details["rules"] == ["policy.file"]  # type: ignore[attr-defined]


def test_a_missing_policy_file_refuses_every_study_naming_the_file(kit: Path,
                                                                   tmp_path: Path) -> None:
    missing = tmp_path / "site_policy.toml"
    policy = _node_policy(kit, tmp_path, missing)
    why = policy.refusal("s1", parse_config(PRIVATE), "h" * 64, _site(), 3, None)
    assert why is not None and str(missing) in why and "does not exist" in why
    # The steward creates it: the node applies it at the next study, without a restart.
    _policy_file(tmp_path, permissive_policy())
    assert policy.refusal("s2", parse_config(PLAIN), "h" * 64, _site(), 3, None) is None


def test_an_invalid_policy_file_stops_the_node_at_start_naming_the_key(
        kit: Path, tmp_path: Path) -> None:
    path = _policy_file(tmp_path, "[privacy]\nmax_epsilon_per_study = -1\n")
    with pytest.raises(ConfigError, match=r"privacy\.max_epsilon_per_study"):
        _node_policy(kit, tmp_path, path)


# -- refusals -------------------------------------------------------------------------------
def test_the_strict_default_refuses_a_plain_study_naming_each_rule(kit: Path,
                                                                   tmp_path: Path) -> None:
    path = _policy_file(tmp_path, policy_toml(default_policy()))
    policy = _node_policy(kit, tmp_path, path)
    why = policy.refusal("s1", parse_config(PLAIN), "h" * 64, _site(), 3, None)
    assert why is not None and why.startswith("site alpha refuses the study under its site "
                                              "policy: rule privacy.require_dp: ")
    assert "rule secure_aggregation.required: " in why


def test_what_the_hub_is_told_holds_no_site_figures_the_audit_trail_does(
        kit: Path, tmp_path: Path) -> None:
    path = _policy_file(tmp_path, "[cohort]\nmin_rows = 500\nmin_per_class = 90\n"
                                  "[privacy]\nmax_epsilon_total = 10.0\n")
    ledger = _FixedLedger(9.5)
    policy = _node_policy(kit, tmp_path, path)
    why = policy.refusal("s1", parse_config(PRIVATE), "h" * 64, _site(333, 77), 3, ledger)
    assert why is not None
    for rule in ("cohort.min_rows", "cohort.min_per_class", "privacy.max_epsilon_total"):
        assert f"rule {rule}: refused by the site's policy" in why
    for figure in ("333", "77", "9.5", "0.5"):  # rows, the small class, spent, left
        assert figure not in why
    policy.audit.flush()
    [entry] = _audit(tmp_path)
    full = entry.details["why"]  # type: ignore[attr-defined]
    assert "333 rows" in full and "has 77 rows" in full and "9.5 spent" in full


class _FixedLedger:
    """A ledger that has spent ``epsilon`` (other studies') - what the policy reads of it."""

    def __init__(self, epsilon: float) -> None:
        self.epsilon = epsilon
        self.excluded: set[str] = set()

    def spent(self, exclude: object = ()) -> object:
        self.excluded = set(exclude)  # type: ignore[call-overload]
        return type("Spent", (), {"epsilon": self.epsilon})()


def test_a_study_over_the_sites_epsilon_budget_is_refused(kit: Path, tmp_path: Path) -> None:
    path = _policy_file(tmp_path, "[privacy]\nmax_epsilon_per_study = 3.0\n"
                                  "max_epsilon_total = 10.0\n")
    policy = _node_policy(kit, tmp_path, path)
    assert policy.refusal("s1", parse_config(PRIVATE), "h" * 64, _site(), 3,
                          _FixedLedger(7.0)) is None  # 7 + 2 <= 10
    # A second study: 7 spent + 2 reserved by s1 + 2 asked > 10.
    why = policy.refusal("s2", parse_config(PRIVATE), "h" * 64, _site(), 3, _FixedLedger(7.0))
    assert why is not None and "rule privacy.max_epsilon_total" in why


def test_a_dp_study_at_a_site_without_a_ledger_is_refused(kit: Path, tmp_path: Path) -> None:
    policy = _node_policy(kit, tmp_path, _policy_file(tmp_path, "[cohort]\nmin_rows = 1\n"))
    why = policy.refusal("s1", parse_config(PRIVATE), "h" * 64, _site(), 3, None)
    assert why is not None and "rule privacy.max_epsilon_total" in why


def test_a_study_giving_a_noise_multiplier_is_checked_at_its_computed_epsilon() -> None:
    cfg = parse_config({**PRIVATE, "privacy": {"mode": "dp_fedavg_distributed", "clip": 1.0,
                                               "noise_multiplier": 0.5}})
    eps = planned_epsilon(cfg, 240, 3)
    assert eps is not None and eps > 3.0  # 3 rounds at z <= 0.5: far past the default
    refusal = study_refusal(default_policy(), study_request(cfg, 240, 3),
                            site_facts(_site(), 0.0), "alpha")
    assert refusal is not None and refusal.rules == ["privacy.max_epsilon_per_study",
                                                     "privacy.max_epsilon_total"]
    assert f"the study asks epsilon {eps:g}" in refusal.full
    assert planned_epsilon(parse_config(PRIVATE), 240, 3) is None  # states its own


def test_a_class_the_site_lacks_fails_the_per_class_minimum() -> None:
    facts = site_facts(_site(300, 0), 0.0)
    assert facts.class_counts == {"0": 300, "1": 0} and facts.rows == 300


# -- a steward's edit -------------------------------------------------------------------------
def test_an_edit_applies_at_the_next_task_without_a_restart(kit: Path, tmp_path: Path) -> None:
    path = _policy_file(tmp_path, permissive_policy())
    policy = _node_policy(kit, tmp_path, path)
    assert policy.refusal("s1", parse_config(PLAIN), "h" * 64, _site(), 3, None) is None
    assert policy.recheck("s1", None) is None
    path.write_text(policy_toml(default_policy()))
    os.utime(path, ns=(1, 1))  # a new modification time, whatever the clock's resolution
    why = policy.recheck("s1", None)
    assert why is not None and "privacy.require_dp" in why
    path.write_text("[studies]\nmax_rounds = 0\n")  # broken while the node runs: refuse
    why = policy.recheck("s1", None)
    assert why is not None and "cannot be read" in why
    assert policy.stale("s1") is False  # refused under the policy as it is now


def test_a_study_refused_before_an_edit_is_loaded_again_after_it(kit: Path,
                                                                  tmp_path: Path) -> None:
    path = _policy_file(tmp_path, policy_toml(default_policy()))
    policy = _node_policy(kit, tmp_path, path)
    assert policy.refusal("s1", parse_config(PLAIN), "h" * 64, _site(), 3, None) is not None
    assert policy.stale("s1") is False
    path.write_text(permissive_policy())
    os.utime(path, ns=(2, 2))
    assert policy.stale("s1") is True  # the agent loads s1 again: now admitted
    assert policy.refusal("s1", parse_config(PLAIN), "h" * 64, _site(), 3, None) is None


# -- per task ---------------------------------------------------------------------------------
def _task(kind: TaskKind = TaskKind.FIT, round_: int = 1) -> Task:
    return Task(task_id=f"s/r{round_}/{kind.value}/alpha", study="s", round=round_,
                site="alpha", kind=kind, parameters=Parameters({}))


def _update(task: Task) -> Update:
    return Update(task_id=task.task_id, site="alpha", round=task.round, kind=UpdateKind.FULL,
                  parameters=Parameters({}), num_examples=10,
                  metrics={"train_loss": 0.3, "steps": 4.0},
                  eval_metrics={"accuracy": 0.9, "prevalence": 0.2}, num_eval_examples=5)


def test_metrics_the_policy_keeps_are_dropped_from_the_reply_and_reported() -> None:
    heard: list[tuple[str, list[str]]] = []
    gate = ReleaseGate(default_policy(),
                       on_withheld=lambda t, vs: heard.append((t.task_id, [v.asked
                                                                           for v in vs])))
    task = _task()
    out = gate.release(task, _update(task))
    assert dict(out.metrics) == {"steps": 4.0} and dict(out.eval_metrics) == {"accuracy": 0.9}
    assert out.num_examples == 10 and "site_policy:metrics_withheld" in out.provenance
    assert heard == [(task.task_id, ["train_loss", "prevalence"])]


def test_a_reply_the_policy_allows_whole_is_unchanged(tmp_path: Path) -> None:
    gate = ReleaseGate(load_policy(_policy_file(tmp_path, permissive_policy())))
    task = _task()
    update = _update(task)
    assert gate.release(task, update) is update


def test_a_task_past_the_policys_maximum_round_is_refused(tmp_path: Path) -> None:
    gate = ReleaseGate(load_policy(_policy_file(tmp_path, "[studies]\nmax_rounds = 2\n")))
    gate.admit(_task(round_=2))
    with pytest.raises(Refused, match=r"rule studies.max_rounds: .* round 3, .* at most 2"):
        gate.admit(_task(round_=3))
    with pytest.raises(Refused):
        gate.admit(_task(TaskKind.SECAGG_MASK, round_=3))
    gate.admit(_task(TaskKind.LOCAL_BASELINE, round_=3))  # after the rounds, by design


# -- simulation --------------------------------------------------------------------------------
SIM = {"study": {"name": "sim-policy", "rounds": 2, "seed": 0},
       "data": {"source": "builtin", "dataset": "breast_cancer", "sites": 3,
                "partition": "iid"},
       "model": {"name": "logreg"}, "strategy": {"name": "fedavg"},
       "baselines": {"local": False, "centralized": False}, "run": {"workers": 1}}


def test_simulated_sites_keep_what_their_policy_keeps(tmp_path: Path) -> None:
    text = permissive_policy().replace(
        'fit = ["train_loss", ', 'fit = [')  # this site's loss curve stays at the site
    history = simulate(SIM, site_policies={"*": _policy_file(tmp_path, text)})
    for record in history.rounds:
        assert record.train_metrics and all("train_loss" not in m and "steps" in m
                                            for m in record.train_metrics.values())
    assert history.meta["site_policy"] == {"sites": ["site-1", "site-2", "site-3"],
                                           "refused": {}}


def test_a_simulated_site_whose_policy_refuses_is_left_out_with_its_reason(
        tmp_path: Path) -> None:
    strict = _policy_file(tmp_path, policy_toml(default_policy()))
    with pytest.warns(UserWarning, match="site site-2 refuses the study"):
        history = simulate(SIM, site_policies={"site-2": strict}, output_dir=tmp_path / "run")
    assert all(sorted(r.train_metrics) == ["site-1", "site-3"] for r in history.rounds)
    assert "rule privacy.require_dp" in history.meta["site_policy"]["refused"]["site-2"]
    [entry] = [e for e in read(tmp_path / "run" / "audit.jsonl")
               if e.kind is EventKind.POLICY_REFUSED]
    assert entry.details["site"] == "site-2" and "rule privacy.require_dp" in entry.details["why"]
    from fedcare.governance.audit_log import verify
    from fedcare.sim.audit import run_log_and_keys

    assert verify(*run_log_and_keys(tmp_path / "run")).ok


def test_a_simulation_left_with_too_few_sites_stops_before_training(tmp_path: Path) -> None:
    strict = _policy_file(tmp_path, policy_toml(default_policy()))
    cfg = {**SIM, "strategy": {"name": "fedavg", "min_completed": 3}}
    with pytest.raises(ConfigError, match="leave 2 of 3 sites, the study needs 3"):
        simulate(cfg, site_policies={"site-1": strict})
    with pytest.raises(ConfigError, match=r"names \['nowhere'\]"):
        simulate(SIM, site_policies={"nowhere": strict})


# -- the command line ----------------------------------------------------------------------------
def _fedcare(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    import fedcare

    src = str(Path(fedcare.__file__).resolve().parents[1])
    return subprocess.run([sys.executable, "-m", "fedcare.cli.main", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": src, "NO_COLOR": "1",
                               "COLUMNS": "200"})


def test_simulate_with_a_refusing_site_policy_exits_non_zero_naming_the_rule(
        tmp_path: Path) -> None:
    (tmp_path / "study.toml").write_text(
        '[study]\nname = "sim-policy"\nrounds = 2\n[data]\nsource = "builtin"\n'
        'dataset = "breast_cancer"\nsites = 3\npartition = "iid"\n[model]\nname = "logreg"\n'
        '[strategy]\nname = "fedavg"\n')
    assert _fedcare("node", "policy", "init", "--out", "strict.toml", cwd=tmp_path
                    ).returncode == 0
    result = _fedcare("simulate", "study.toml", "--site-policy", "strict.toml", "--out",
                      "run", cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    said = " ".join(result.stderr.split())
    assert "the site policies leave 0 of 3 sites" in said
    assert "site site-1 refuses the study under its site policy: rule privacy.require_dp" in said
    assert not (tmp_path / "run" / "history.json").exists()
    bad = _fedcare("simulate", "study.toml", "--site-policy", "site-1=", cwd=tmp_path)
    assert bad.returncode == 2 and "NAME=FILE" in bad.stderr


def test_policy_init_writes_the_strict_default_and_node_init_puts_it_in_the_kit(
        tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from fedcare.cli.main import app

    runner = CliRunner()
    assert runner.invoke(app, ["node", "policy", "init", "--out",
                               str(tmp_path / "p.toml")]).exit_code == 0
    assert load_policy(tmp_path / "p.toml") == default_policy()
    again = runner.invoke(app, ["node", "policy", "init", "--out", str(tmp_path / "p.toml")])
    assert again.exit_code == 2 and "--overwrite" in again.output
    assert runner.invoke(app, ["node", "init", "--site", "beta", "--out",
                               str(tmp_path / "kit")]).exit_code == 0
    assert load_policy(tmp_path / "kit" / "site_policy.toml") == default_policy()
    (tmp_path / "bad.toml").write_text("[release]\nfit = ['a b c!']\n")
    check = runner.invoke(app, ["node", "policy", "check", str(tmp_path / "bad.toml")])
    assert check.exit_code == 2 and "release" in check.output
