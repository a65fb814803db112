"""The per-site privacy ledger: budget refusal, hash chain, torn lines, fail-closed policy."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from fedcare.core.errors import ConfigError, ValidationError
from fedcare.privacy.dp import (
    LedgerEntry,
    LedgerError,
    LedgerHead,
    LedgerKey,
    PrivacyBudgetError,
    PrivacyLedger,
    SitePrivacyPolicy,
    epsilon,
)
from tests.unit.helpers import ledger_key

DELTA = 1e-5


def _entry(i: int = 1, *, mechanism: str = "dp_fedavg_central", z: float = 2.0,
           q: float = 1.0, steps: int = 1, delta: float = DELTA) -> LedgerEntry:
    return LedgerEntry(study="s", round=i, task_id=f"s/r{i}/fit/a", mechanism=mechanism,
                       noise_multiplier=z, sample_rate=q, steps=steps, delta=delta)


KEY = ledger_key()


def _ledger(tmp_path: Path, max_eps: float = 10.0, **kw: object) -> PrivacyLedger:
    return PrivacyLedger(tmp_path / "ledger.jsonl",
                         SitePrivacyPolicy(max_epsilon=max_eps, delta=DELTA, **kw), key=KEY)


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
    assert len(problems) == 2 and "line 1: signature does not verify" in problems[0]
    assert "line 2: hash chain broken" in problems[1]
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
    with pytest.raises(ConfigError, match="'max_epsilon': Input should be a finite number"):
        SitePrivacyPolicy.load(path)
    path.write_text("max_epsilon = [\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        SitePrivacyPolicy.load(path)


def test_ledger_requires_a_policy(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="SitePrivacyPolicy"):
        PrivacyLedger(tmp_path / "l.jsonl", None, key=KEY)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="LedgerKey"):
        PrivacyLedger(tmp_path / "l.jsonl", SitePrivacyPolicy(8.0, DELTA),
                      key=None)  # type: ignore[arg-type]


# --- the audit's ledger_tamper.sh (F9): every tampering is found, and charging refuses ------

AUDIT_POLICY = SitePrivacyPolicy(max_epsilon=8.0, delta=DELTA)


def _audit_entry(r: int) -> LedgerEntry:
    return LedgerEntry(study="s", round=r, task_id=f"s/r{r}/fit/alpha",
                       mechanism="dp_fedavg_distributed", noise_multiplier=1.0, sample_rate=1.0,
                       steps=1, delta=DELTA)


def _audited_site(tmp_path: Path) -> tuple[PrivacyLedger, LedgerHead]:
    """Three rounds at z = 1 (epsilon 8.385, past the audit's max_epsilon 8.0) and the head
    the hub acknowledged after the last one."""
    ledger = PrivacyLedger(tmp_path / "privacy-ledger.jsonl",
                           SitePrivacyPolicy(max_epsilon=50.0, delta=DELTA), key=KEY)
    for r in (1, 2, 3):
        ledger.charge(_audit_entry(r))
    head = ledger.head()
    assert head.count == 3 and ledger.verify(head) == []
    return PrivacyLedger(ledger.path, AUDIT_POLICY, key=KEY), head


def _rewrite(path: Path, change: Callable[[list[bytes]], list[bytes]]) -> None:
    path.write_bytes(b"".join(line + b"\n" for line in change(path.read_bytes().splitlines())))


def _edit_last(lines: list[bytes]) -> list[bytes]:
    return [*lines[:-1], lines[-1].replace(b'"noise_multiplier":1.0',
                                           b'"noise_multiplier":50.0')]


def _rechain(lines: list[bytes], *, sign_with: LedgerKey | None = None,
             strip: bool = False) -> list[bytes]:
    """What ledger_tamper.sh does: every entry made cheaper, the hash chain recomputed (and
    optionally re-signed with another key, or the signatures stripped)."""
    out, prev = [], "0" * 64
    for line in lines:
        doc = json.loads(line)
        doc.pop("sig", None)
        doc["noise_multiplier"], doc["prev"] = 100.0, prev
        if sign_with is not None:
            doc["sig"] = sign_with.sign(json.dumps(doc, sort_keys=True,
                                                   separators=(",", ":")).encode())
        elif not strip:
            doc["sig"] = json.loads(line)["sig"]
        new = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
        out.append(new)
        prev = hashlib.sha256(new).hexdigest()
    return out


TAMPERINGS: dict[str, Callable[[Path], None]] = {
    "edit last line": lambda p: _rewrite(p, _edit_last),
    "drop last 2 lines": lambda p: _rewrite(p, lambda lines: lines[:1]),
    "delete the file": lambda p: p.unlink(),
    "re-chain all lines": lambda p: _rewrite(p, _rechain),
    "re-chain and re-sign with another key": lambda p: _rewrite(
        p, lambda lines: _rechain(lines, sign_with=ledger_key())),
    "re-chain and strip the signatures": lambda p: _rewrite(
        p, lambda lines: _rechain(lines, strip=True)),
}


def test_the_untampered_audit_ledger_refuses_the_next_task_on_budget(tmp_path: Path) -> None:
    ledger, head = _audited_site(tmp_path)
    ledger.anchor = head
    with pytest.raises(PrivacyBudgetError, match="limit 8"):
        ledger.charge(_audit_entry(4))


@pytest.mark.parametrize("tamper", list(TAMPERINGS))
def test_every_tampering_is_found_against_the_anchor_and_charging_refuses(
        tmp_path: Path, tamper: str) -> None:
    ledger, head = _audited_site(tmp_path)
    ledger.anchor = head
    TAMPERINGS[tamper](ledger.path)
    before = ledger.path.read_bytes() if ledger.path.exists() else None
    assert ledger.verify() != []
    with pytest.raises(LedgerError, match="fails verification"):
        ledger.charge(_audit_entry(4))  # without the fix: accepted at 6.57 after a cut
    assert (ledger.path.read_bytes() if ledger.path.exists() else None) == before


@pytest.mark.parametrize("tamper", ["edit last line", "re-chain all lines",
                                    "re-chain and re-sign with another key",
                                    "re-chain and strip the signatures"])
def test_a_rewrite_is_found_by_the_signatures_alone_without_the_key(tmp_path: Path,
                                                                    tamper: str) -> None:
    ledger, _ = _audited_site(tmp_path)
    TAMPERINGS[tamper](ledger.path)
    verifier = PrivacyLedger(ledger.path, AUDIT_POLICY, key=LedgerKey(KEY.public))  # no anchor
    problems = verifier.verify()
    assert any("signature does not verify" in p or "unsigned" in p for p in problems), problems
    assert verifier.verified_head() is None  # never reported to the hub as a head
    with pytest.raises(LedgerError):
        ledger.charge(_audit_entry(4))


@pytest.mark.parametrize(("tamper", "why"), [
    ("drop last 2 lines", "holds 1 entries but the hub acknowledged 3"),
    ("delete the file", "holds 0 entries but the hub acknowledged 3"),
    ("edit last line", "entry 3 is not the one the hub acknowledged"),
])
def test_the_anchor_says_what_happened(tmp_path: Path, tamper: str, why: str) -> None:
    ledger, head = _audited_site(tmp_path)
    TAMPERINGS[tamper](ledger.path)
    assert any(why in p for p in ledger.verify(head)), ledger.verify(head)


def test_a_cut_ledger_is_valid_without_an_anchor_which_is_why_it_is_anchored(tmp_path: Path
                                                                             ) -> None:
    ledger, _ = _audited_site(tmp_path)
    TAMPERINGS["drop last 2 lines"](ledger.path)
    assert ledger.verify() == []  # signatures and chain cannot see a cut at the end
    assert ledger.verified_head() == LedgerHead(1, ledger.head().hash)  # reported, and refused


def test_a_ledger_that_grew_past_its_anchor_still_charges(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path, max_eps=100.0)
    ledger.charge(_entry(1))
    ledger.anchor = ledger.head()
    for i in (2, 3):
        ledger.charge(_entry(i))
    assert ledger.verify() == [] and ledger.head().count == 3


def test_a_damaged_ledger_reports_no_head(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path)
    ledger.charge(_entry(1))
    assert ledger.verified_head() == ledger.head()
    with open(ledger.path, "ab") as fh:
        fh.write(b'{"torn')
    assert ledger.verified_head() is None


def test_an_old_unsigned_ledger_is_read_refused_and_can_be_signed_by_its_steward(
        tmp_path: Path) -> None:
    ledger = _ledger(tmp_path)
    for i in (1, 2):
        ledger.charge(_entry(i))
    _rewrite(ledger.path, lambda lines: _rechain(lines, strip=True))  # the pre-signing format
    assert len(ledger.entries()) == 2 and ledger.spent().dp_tasks == 2  # still readable
    problems = ledger.verify()
    assert len(problems) == 1 and "lines 1-2 are unsigned" in problems[0]
    assert "--sign-unsigned" in problems[0]
    with pytest.raises(LedgerError, match="unsigned"):
        ledger.charge(_entry(3))
    assert ledger.sign_unsigned() == 2
    assert ledger.verify() == [] and len(ledger.entries()) == 2
    assert stat.S_IMODE(os.stat(ledger.path).st_mode) == 0o600
    ledger.charge(_entry(3))
    assert ledger.sign_unsigned() == 0


def test_signing_unsigned_entries_refuses_a_damaged_ledger(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path)
    for i in (1, 2, 3):
        ledger.charge(_entry(i))
    _rewrite(ledger.path, lambda lines: _rechain(lines, strip=True))
    _rewrite(ledger.path, lambda lines: [lines[0], lines[2]])  # and a line removed
    before = ledger.path.read_bytes()
    with pytest.raises(LedgerError, match="other problems"):
        ledger.sign_unsigned()
    assert ledger.path.read_bytes() == before


def test_a_verify_only_key_cannot_charge(tmp_path: Path) -> None:
    ledger = PrivacyLedger(tmp_path / "l.jsonl", SitePrivacyPolicy(8.0, DELTA),
                           key=LedgerKey(KEY.public))
    with pytest.raises(LedgerError, match="only verify"):
        ledger.charge(_entry(1))
    assert not ledger.path.exists()


def test_a_private_key_of_another_site_is_refused() -> None:
    with pytest.raises(ConfigError, match="does not belong"):
        LedgerKey(KEY.public, ledger_key().private)


@pytest.mark.parametrize("text", ["", "3", "3:abc", "-1:" + "a" * 64, "01:" + "a" * 64,
                                  "0:" + "a" * 64, "2:" + "0" * 64, "2:" + "A" * 64,
                                  "2:" + "a" * 64 + "\n", 5, None])
def test_a_malformed_ledger_head_is_refused(text: object) -> None:
    with pytest.raises(ValidationError):
        LedgerHead.parse(text)


def test_a_ledger_head_round_trips() -> None:
    head = LedgerHead(12, "ab" * 32)
    assert LedgerHead.parse(str(head)) == head and str(head) == "12:" + "ab" * 32
