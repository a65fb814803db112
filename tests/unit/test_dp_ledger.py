"""The per-site privacy ledger: budget refusal, hash chain, torn lines, fail-closed policy."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from fedcare.core.errors import ConfigError
from fedcare.privacy.dp import (
    LedgerEntry,
    LedgerError,
    PrivacyBudgetError,
    PrivacyLedger,
    SitePrivacyPolicy,
    epsilon,
)

DELTA = 1e-5


def _entry(i: int = 1, *, mechanism: str = "dp_fedavg_central", z: float = 2.0,
           q: float = 1.0, steps: int = 1, delta: float = DELTA) -> LedgerEntry:
    return LedgerEntry(study="s", round=i, task_id=f"s/r{i}/fit/a", mechanism=mechanism,
                       noise_multiplier=z, sample_rate=q, steps=steps, delta=delta)


def _ledger(tmp_path: Path, max_eps: float = 10.0, **kw: object) -> PrivacyLedger:
    return PrivacyLedger(tmp_path / "ledger.jsonl",
                         SitePrivacyPolicy(max_epsilon=max_eps, delta=DELTA, **kw))


def test_charges_compose_with_a_real_accountant(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path, accountant="rdp")
    for i in (1, 2, 3):
        total = ledger.charge(_entry(i))
    assert total == pytest.approx(epsilon(2.0, 1.0, 3, DELTA, "rdp"))
    spent = ledger.spent()
    assert spent.epsilon == pytest.approx(total) and spent.dp_tasks == 3
    assert ledger.verify() == []
    assert stat.S_IMODE(os.stat(ledger.path).st_mode) == 0o600


def test_mixed_mechanisms_are_composed_together(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path, accountant="rdp")
    ledger.charge(_entry(1, mechanism="dp_sgd", z=1.0, q=0.1, steps=20))
    total = ledger.charge(_entry(2, z=2.0))
    alone = epsilon(1.0, 0.1, 20, DELTA, "rdp")
    assert total > alone and total > epsilon(2.0, 1.0, 1, DELTA, "rdp")


def test_over_budget_is_refused_with_spent_requested_and_limit(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path, max_eps=3.0, accountant="rdp")
    ledger.charge(_entry(1))
    before = ledger.path.read_bytes()
    with pytest.raises(PrivacyBudgetError, match=r"spent epsilon .* bring it to .*limit 3"):
        ledger.charge(_entry(2, z=0.5))
    assert ledger.path.read_bytes() == before  # nothing written on refusal


def test_require_dp_refuses_non_dp_tasks_and_non_dp_tasks_are_counted(tmp_path: Path) -> None:
    strict = _ledger(tmp_path / "strict", require_dp=True)
    with pytest.raises(PrivacyBudgetError, match="require_dp"):
        strict.charge(_entry(1, mechanism="none", z=0.0))
    assert not strict.path.exists()
    lax = _ledger(tmp_path / "lax")
    lax.charge(_entry(1, mechanism="none", z=0.0))
    assert lax.spent().non_dp_tasks == 1 and lax.spent().epsilon == 0.0


def test_larger_study_delta_than_the_site_allows_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PrivacyBudgetError, match="delta"):
        _ledger(tmp_path).charge(_entry(1, delta=1e-3))


@pytest.mark.parametrize(("kwargs", "key"), [
    ({"z": 0.0}, "noise_multiplier"), ({"z": float("nan")}, "noise_multiplier"),
    ({"q": 0.0}, "sample_rate"), ({"q": 1.5}, "sample_rate"), ({"steps": 0}, "steps"),
    ({"mechanism": "laplace"}, "mechanism"), ({"delta": float("inf")}, "delta"),
])
def test_invalid_entries_are_refused_before_anything_is_written(kwargs: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        _entry(1, **kwargs)


def test_an_edited_line_breaks_the_chain_and_charging_fails_closed(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path)
    for i in (1, 2, 3):
        ledger.charge(_entry(i))
    lines = ledger.path.read_bytes().split(b"\n")
    doc = json.loads(lines[0])
    doc["noise_multiplier"] = 50.0  # pretend round 1 was cheaper
    lines[0] = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    ledger.path.write_bytes(b"\n".join(lines))
    problems = ledger.verify()
    assert len(problems) == 1 and "line 2: hash chain broken" in problems[0]
    with pytest.raises(LedgerError, match="fails verification"):
        ledger.charge(_entry(4))


def test_a_removed_line_is_detected(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path)
    for i in (1, 2, 3):
        ledger.charge(_entry(i))
    lines = ledger.path.read_bytes().split(b"\n")
    ledger.path.write_bytes(b"\n".join([lines[0], *lines[2:]]))
    assert any("line 2: hash chain broken" in p for p in ledger.verify())


def test_a_torn_last_line_is_reported_not_dropped(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path)
    ledger.charge(_entry(1))
    with open(ledger.path, "ab") as fh:
        fh.write(b'{"study":"s","rou')
    problems = ledger.verify()
    assert len(problems) == 1 and "torn last line" in problems[0]
    assert len(ledger.entries()) == 1  # the complete entries still read
    with pytest.raises(LedgerError, match="torn"):
        ledger.charge(_entry(2))


def test_garbage_line_is_reported(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path)
    ledger.path.write_bytes(b"not json\n")
    assert "not a valid ledger entry" in ledger.verify()[0]


def test_policy_file_fails_closed(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"does not exist.*refuse every task"):
        SitePrivacyPolicy.load(tmp_path / "missing.toml")
    path = tmp_path / "policy.toml"
    path.write_text('max_epsilon = 8.0\ndelta = 1e-5\naccountant = "rdp"\nrequire_dp = true\n')
    policy = SitePrivacyPolicy.load(path)
    assert policy.max_epsilon == 8.0 and policy.require_dp and policy.accountant == "rdp"
    path.write_text("max_epsilon = 8.0\nmax_epsilom = 1\n")
    with pytest.raises(ConfigError) as info:
        SitePrivacyPolicy.load(path)
    assert any("max_epsilom" in p for p in info.value.problems)
    assert any("missing key 'delta'" in p for p in info.value.problems)
    path.write_text("max_epsilon = nan\ndelta = 1e-5\n")
    with pytest.raises(ConfigError, match="max_epsilon must be finite"):
        SitePrivacyPolicy.load(path)
    path.write_text("max_epsilon = [\n")
    with pytest.raises(ConfigError, match="cannot parse"):
        SitePrivacyPolicy.load(path)


def test_ledger_requires_a_policy(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="SitePrivacyPolicy"):
        PrivacyLedger(tmp_path / "l.jsonl", None)  # type: ignore[arg-type]
