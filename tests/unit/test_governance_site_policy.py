"""The site's own policy: each rule refuses with its message, the default is strict, and bad
policy files are refused with one line per problem naming the key."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from fedcare.config import parse_config
from fedcare.core.errors import ConfigError, ValidationError
from fedcare.core.messages import TaskKind
from fedcare.governance.site_policy import (
    SiteFacts,
    SitePolicy,
    StudyRequest,
    Violation,
    check_study,
    check_task,
    default_policy,
    load_policy,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "site_policy.toml"
SITE = SiteFacts(rows=1000, class_counts={"0": 600, "1": 400}, epsilon_spent=0.0)
#: A study every rule of the strict default allows.
GOOD = StudyRequest(strategy="fedavg", model="logreg", rounds=20, privacy="dp_sgd",
                    epsilon=2.0, delta=1e-5, secure_aggregation="secagg", task="binary")


def _policy(tmp_path: Path, text: str) -> SitePolicy:
    (tmp_path / "site_policy.toml").write_text(text)
    return load_policy(tmp_path / "site_policy.toml")


def _plain_config() -> object:
    return parse_config({"study": {"rounds": 10},
                         "data": {"source": "federation", "dataset": "cardio",
                                  "label": "y", "features": ["a", "b"]},
                         "model": {"name": "logreg"}, "strategy": {"name": "fedavg"}})


def _rules(violations: list[Violation]) -> list[str]:
    return [v.rule for v in violations]


def test_the_strict_default_allows_a_private_secure_study() -> None:
    assert check_study(default_policy(), GOOD, SITE) == []


def test_the_strict_default_refuses_a_typical_plain_study_as_documented() -> None:
    violations = check_study(default_policy(), _plain_config(), SITE)
    assert _rules(violations) == ["privacy.require_dp", "secure_aggregation.required"]
    assert str(violations[0]) == (
        "rule privacy.require_dp: the study has no differential privacy (privacy.mode = "
        "none), this site requires one of dp_fedavg_distributed, dp_sgd")
    assert "the hub would see this site's update" in str(violations[1])


def test_the_example_file_is_the_strict_default() -> None:
    assert load_policy(EXAMPLE) == default_policy()


def test_an_empty_policy_file_is_the_strict_default(tmp_path: Path) -> None:
    assert _policy(tmp_path, "") == default_policy()


def test_a_missing_policy_file_is_an_error_never_no_rules(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="refuses every study"):
        load_policy(tmp_path / "absent.toml")


@pytest.mark.parametrize(("change", "rule", "message"), [
    ({"strategy": "scaffold"}, "studies.strategies",
     "the study uses strategy 'scaffold', this site allows fedavg, fedprox"),
    ({"model": "transformer"}, "studies.models",
     "the study uses model 'transformer', this site allows cnn, logreg, mlp"),
    ({"custom_code": True}, "studies.custom_code",
     "the study brings its own model code, this site allows built-in models only"),
    ({"rounds": 500}, "studies.max_rounds",
     "the study asks 500 rounds, this site allows at most 100"),
    ({"privacy": "dp_fedavg_central"}, "privacy.mechanisms",
     "the study uses dp_fedavg_central, this site allows dp_fedavg_distributed, dp_sgd"),
    ({"delta": 1e-3}, "privacy.max_delta",
     "the study asks delta 0.001, this site allows at most 1e-05"),
    ({"epsilon": 8.0}, "privacy.max_epsilon_per_study",
     "the study asks epsilon 8, this site allows at most 3"),
    ({"epsilon": None}, "privacy.max_epsilon_per_study",
     "the study states no epsilon (it gives a noise multiplier, not privacy.target_epsilon), "
     "this site allows at most 3 and must know it before approving"),
    ({"secure_aggregation": "none"}, "secure_aggregation.required",
     "the study has no secure aggregation (the hub would see this site's update), this site "
     "requires one of ckks, secagg, secagg+"),
])
def test_each_study_rule_refuses_with_its_message(change: dict[str, object], rule: str,
                                                  message: str) -> None:
    violations = check_study(default_policy(), replace(GOOD, **change), SITE)  # type: ignore[arg-type]
    assert [(v.rule, v.message) for v in violations] == [(rule, message)]


def test_a_protocol_the_site_does_not_allow_is_refused(tmp_path: Path) -> None:
    policy = _policy(tmp_path, '[secure_aggregation]\nprotocols = ["ckks"]\n')
    [violation] = check_study(policy, GOOD, SITE)
    assert (violation.rule, violation.asked, violation.allowed) == (
        "secure_aggregation.protocols", "secagg", "ckks")


def test_the_total_budget_counts_what_the_site_spent_and_hides_it_from_the_hub() -> None:
    [violation] = check_study(default_policy(), GOOD, replace(SITE, epsilon_spent=9.0))
    assert violation.rule == "privacy.max_epsilon_total"
    assert violation.message == ("the study asks epsilon 2, this site has 1 left of its total "
                                 "10 (9 spent)")
    assert violation.site_private and "9" not in violation.for_hub()
    [nan_spent] = check_study(default_policy(), GOOD, replace(SITE, epsilon_spent=float("nan")))
    assert nan_spent.rule == "privacy.max_epsilon_total"  # an unreadable ledger is no budget


def test_cohort_rules_refuse_small_sites_and_small_classes() -> None:
    small = SiteFacts(rows=50, class_counts={"0": 45, "1": 5})
    violations = check_study(default_policy(), GOOD, small)
    assert [(v.rule, v.message) for v in violations] == [
        ("cohort.min_rows", "the dataset has 50 rows at this site, the study needs at least 100"),
        ("cohort.min_per_class",
         "class '1' has 5 rows at this site, each class needs at least 20")]
    assert all(v.site_private for v in violations)
    assert [v.for_hub() for v in violations] == [
        "rule cohort.min_rows: refused by the site's policy",
        "rule cohort.min_per_class: refused by the site's policy"]


def test_unknown_class_counts_fail_closed_unless_the_label_is_continuous() -> None:
    unknown = SiteFacts(rows=1000, class_counts=None)
    [violation] = check_study(default_policy(), GOOD, unknown)
    assert violation.rule == "cohort.min_per_class" and "unknown" in violation.message
    assert check_study(default_policy(), replace(GOOD, task="regression"), unknown) == []
    assert check_study(default_policy(), replace(GOOD, task=None), unknown) != []


def test_the_study_request_is_read_from_a_study_config() -> None:
    cfg = parse_config({"study": {"rounds": 10},
                        "data": {"source": "federation", "dataset": "d", "label": "y",
                                 "features": ["a"], "standardize": True,
                                 "stats_clip": [-5.0, 5.0]},
                        "strategy": {"name": "fedprox", "mu": 0.1},
                        "privacy": {"mode": "dp_fedavg_distributed", "target_epsilon": 2.0,
                                    "stats_epsilon": 0.5},
                        "secure_aggregation": {"protocol": "secagg"}})
    request = StudyRequest.from_config(cfg)
    assert request == StudyRequest(strategy="fedprox", model="logreg", rounds=10,
                                   privacy="dp_fedavg_distributed", epsilon=2.5, delta=1e-5,
                                   secure_aggregation="secagg", task="binary")
    assert check_study(default_policy(), cfg, SITE) == []


def test_a_config_with_a_noise_multiplier_only_states_no_epsilon() -> None:
    cfg = parse_config({"data": {"source": "federation", "dataset": "d", "label": "y",
                                 "features": ["a"], "standardize": False},
                        "privacy": {"mode": "dp_sgd", "noise_multiplier": 1.1},
                        "secure_aggregation": {"protocol": "secagg"}})
    assert StudyRequest.from_config(cfg).epsilon is None
    assert _rules(check_study(default_policy(), cfg, SITE)) == ["privacy.max_epsilon_per_study"]
    assert check_study(default_policy(), StudyRequest.from_config(cfg, epsilon=1.0), SITE) == []


def test_a_lax_policy_allows_what_the_strict_one_refuses(tmp_path: Path) -> None:
    policy = _policy(tmp_path, """
[privacy]
require_dp = false
[secure_aggregation]
required = false
""")
    assert check_study(policy, _plain_config(), SITE) == []


# --- what may leave per task --------------------------------------------------------------
def test_a_per_site_loss_curve_may_not_leave_by_default() -> None:
    [violation] = check_task(default_policy(), TaskKind.FIT, ["steps", "train_loss"])
    assert str(violation) == ("rule release.fit: metric 'train_loss' may not leave this site "
                              "in a fit reply (allowed: dp_clip, dp_noise_multiplier, "
                              "dp_sample_rate, steps)")
    assert check_task(default_policy(), TaskKind.EVALUATE, ["auc", "accuracy"]) == []


def test_a_task_kind_the_policy_does_not_name_is_refused() -> None:
    [violation] = check_task(default_policy(), "export_rows", [])
    assert violation.rule == "release" and "nothing of it may leave" in violation.message


def test_every_task_kind_has_a_release_rule() -> None:
    for kind in TaskKind:
        assert check_task(default_policy(), kind, []) == [], kind


def test_secure_aggregation_tasks_release_no_metrics() -> None:
    assert _rules(check_task(default_policy(), TaskKind.SECAGG_MASK, ["norm"])) == [
        "release.sa_mask"]


# --- bad policy files -------------------------------------------------------------------------
@pytest.mark.parametrize(("text", "line"), [
    ("[privacy]\nmax_epsilon_per_study = -1.0\n",
     "'privacy.max_epsilon_per_study': Input should be greater than or equal to 0 (got -1.0); "
     "valid range [0, 1000.0]"),
    ("[studies]\nmax_round = 5\n", "unknown key 'studies.max_round'"),
    ("[studies]\nmax_rounds = \"ten\"\n",
     "'studies.max_rounds': Input should be a valid integer, unable to parse string as an "
     "integer (got 'ten')"),
    ("[privacy]\nrequire_dp = \"yes please\"\n",
     "'privacy.require_dp': Input should be a valid boolean, unable to interpret input "
     "(got 'yes please')"),
    ("[privacy]\nmax_epsilon_total = inf\n", "'privacy.max_epsilon_total'"),
    ("[privacy]\nmax_epsilon_per_study = 5.0\nmax_epsilon_total = 4.0\n",
     "max_epsilon_per_study (5.0) is more than max_epsilon_total (4.0)"),
    ("[privacy]\nmechanisms = [\"laplace\"]\n", "'privacy.mechanisms[0]'"),
    ("[release]\nfitt = []\n", "unknown key 'release.fitt'"),
    ("[studies]\nstrategies = [\"Fed Avg\"]\n", "'Fed Avg' is not a strategy or model name"),
    ("[cohort]\nmin_rows = 0\n", "'cohort.min_rows'"),
    ("surprise = 1\n", "unknown key 'surprise'"),
])
def test_bad_policy_files_give_one_line_per_problem_with_the_key(
        tmp_path: Path, text: str, line: str) -> None:
    with pytest.raises(ConfigError) as info:
        _policy(tmp_path, text)
    assert len(info.value.problems) == 1
    assert "\n" not in info.value.problems[0]
    assert line in info.value.problems[0]
    assert "site_policy.toml" in str(info.value)


def test_a_policy_file_that_is_not_toml_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        _policy(tmp_path, "[studies\n")


@pytest.mark.parametrize("facts", [
    {"rows": None, "class_counts": None}, {"rows": -1, "class_counts": None},
    {"rows": 10, "class_counts": {"0": "many"}}, {"rows": 10, "class_counts": {"0": -3}},
    {"rows": 10, "class_counts": None, "epsilon_spent": "0"},
])
def test_site_facts_of_the_wrong_kind_are_refused(facts: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        SiteFacts(**facts)  # type: ignore[arg-type]


def test_a_study_request_of_the_wrong_kind_is_refused() -> None:
    with pytest.raises(ValidationError):
        replace(GOOD, rounds="10")  # type: ignore[arg-type]


def test_checks_refuse_anything_but_a_policy() -> None:
    with pytest.raises(TypeError):
        check_study(None, GOOD, SITE)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        check_task({}, "fit", [])  # type: ignore[arg-type]
