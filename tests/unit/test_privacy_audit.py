"""Membership-inference audit: ROC figures on hand-made scores, attacks that succeed on an
overfit model and fail on an untrained one, run folders and the CLI's bad inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from fedcare.attacks.membership import (
    AuditSettings,
    Candidates,
    attack,
    audit_run,
    balanced_membership,
    confidence_logit,
    evaluate_attack,
    html_fragment,
    lira_scores,
    load_run,
    loss_scores,
    per_example_loss,
    roc_curve,
    study_privacy,
    tpr_at_fpr,
)
from fedcare.cli.audit import app
from fedcare.core.dataset import TaskType
from fedcare.core.errors import ConfigError, DataError, ValidationError
from fedcare.core.messages import TrainConfig
from fedcare.core.params import Parameters
from fedcare.core.wire import save_parameters
from fedcare.learners.metrics import task_metrics
from fedcare.learners.torch_learner import TorchLearner

# ---------------------------------------------------------------------------------- ROC


def _hand_made() -> tuple[np.ndarray, np.ndarray]:
    non_members = np.arange(1000.0)  # 1000 negatives: FPR steps of 0.1%
    members = np.array([2000, 2000, 2000, 998.5, 990.5, 990.5, 0.5, 0.5, 0.5, 0.5])
    labels = np.r_[np.zeros(1000), np.ones(10)].astype(int)
    return labels, np.r_[non_members, members]


def test_tpr_at_low_fpr_on_hand_made_scores():
    labels, scores = _hand_made()
    roc = roc_curve(labels, scores)

    # >= 2000: 3 members, 0 FP; >= 998.5: +1 member, 1 FP (999); >= 990.5: 6 members, 9 FP
    assert tpr_at_fpr(roc, 0.0) == pytest.approx(0.3)
    assert tpr_at_fpr(roc, 0.001) == pytest.approx(0.4)
    assert tpr_at_fpr(roc, 0.01) == pytest.approx(0.6)
    assert tpr_at_fpr(roc, 1.0) == 1.0
    # AUC = P(member > non-member): 998.5 beats 999 of 1000 scores, 990.5 beats 991, 0.5 one
    assert roc.auc == pytest.approx((3 + 0.999 + 2 * 0.991 + 4 * 0.001) / 10)


def test_roc_agrees_with_scikit_learn_and_treats_ties_as_one_point():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 300)
    scores = np.round(rng.normal(size=300) + labels, 1)  # many ties
    roc = roc_curve(labels, scores)

    assert roc.auc == pytest.approx(roc_auc_score(labels, scores))
    assert roc.fpr[0] == 0 and roc.tpr[-1] == 1 and roc.fpr[-1] == 1
    assert np.all(np.diff(roc.fpr) >= 0) and np.all(np.diff(roc.tpr) >= 0)
    flat = roc_curve(labels, np.zeros(300))
    assert flat.auc == 0.5 and tpr_at_fpr(flat, 0.01) == 0.0


@pytest.mark.parametrize(("labels", "scores", "match"), [
    ([1, 1], [0.1, 0.2], "both members and non-members"),
    ([0, 1, 2], [0.1, 0.2, 0.3], "0 .non-member. or 1"),
    ([0, 1], [0.1, np.nan], "NaN"),
    ([0, 1, 1], [0.1, 0.2], "3 labels but 2 scores"),
])
def test_roc_refuses_bad_inputs(labels, scores, match):
    with pytest.raises(ValidationError, match=match):
        roc_curve(np.array(labels), np.array(scores))


def test_tpr_at_fpr_refuses_out_of_range_target():
    labels, scores = _hand_made()
    with pytest.raises(ValidationError, match="target FPR"):
        tpr_at_fpr(roc_curve(labels, scores), 1.5)


# ------------------------------------------------------------------------------- scores
def test_per_example_losses_average_to_the_learners_loss():
    rng = np.random.default_rng(1)
    logits, y = rng.normal(size=(50, 1)) * 5, rng.integers(0, 2, 50)
    assert per_example_loss(TaskType.BINARY, logits, y).mean() == pytest.approx(
        task_metrics(TaskType.BINARY, logits, y)["loss"])
    logits3, y3 = rng.normal(size=(50, 3)) * 5, rng.integers(0, 3, 50)
    assert per_example_loss(TaskType.MULTICLASS, logits3, y3).mean() == pytest.approx(
        task_metrics(TaskType.MULTICLASS, logits3, y3)["loss"])


def test_confidence_logit_is_log_odds_of_the_true_class():
    rng = np.random.default_rng(2)
    z, y = rng.normal(size=(40, 4)), rng.integers(0, 4, 40)
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    py = p[np.arange(40), y]
    np.testing.assert_allclose(confidence_logit(TaskType.MULTICLASS, z, y),
                               np.log(py / (1 - py)))
    s, t = rng.normal(size=(40, 1)), rng.integers(0, 2, 40)
    pb = 1 / (1 + np.exp(-s[:, 0]))
    pt = np.where(t == 1, pb, 1 - pb)
    np.testing.assert_allclose(confidence_logit(TaskType.BINARY, s, t), np.log(pt / (1 - pt)))
    # no overflow where p -> 1
    assert np.isfinite(confidence_logit(TaskType.BINARY, np.array([[800.0]]), np.array([1])))


# ------------------------------------------------------------------------------- LiRA
def test_balanced_membership_puts_every_example_in_half_the_shadows():
    m = balanced_membership(8, 500, seed=3)
    assert m.shape == (8, 500) and (m.sum(0) == 4).all()
    assert m.sum(1).min() > 200 and m.sum(1).max() < 300
    with pytest.raises(ConfigError, match="at least 2"):
        balanced_membership(1, 10, seed=0)


@pytest.mark.parametrize("online", [True, False])
def test_lira_separates_gaussian_in_and_out_confidences(online):
    rng = np.random.default_rng(4)
    n, k = 400, 16
    mask = balanced_membership(k, n, seed=0)
    base = rng.normal(0, 3, n)  # per-example difficulty: LiRA calibrates it away
    shadow = base + np.where(mask, 2.0, 0.0) + rng.normal(0, 1, (k, n))
    is_member = np.r_[np.ones(n // 2), np.zeros(n // 2)].astype(int)
    target = base + 2.0 * is_member + rng.normal(0, 1, n)

    auc = roc_curve(is_member, lira_scores(target, shadow, mask, online=online)).auc
    naive = roc_curve(is_member, target).auc  # same statistic without calibration

    assert auc > 0.85 and auc > naive + 0.1


def test_lira_refuses_misaligned_inputs():
    with pytest.raises(ValidationError, match="do not line up"):
        lira_scores(np.zeros(5), np.zeros((4, 6)), np.zeros((4, 6), bool))
    with pytest.raises(ValidationError, match="each group"):
        lira_scores(np.zeros(3), np.zeros((2, 3)), np.ones((2, 3), bool))
    with pytest.raises(ValidationError, match="NaN"):
        loss_scores(np.array([np.inf]))


# -------------------------------------------------------------- attacks on real models
def _learner(seed: int = 0) -> TorchLearner:
    return TorchLearner.from_zoo("mlp", (20,), 1, TaskType.BINARY, {"hidden": [128]}, seed)


def _random_label_data(n: int, seed: int = 0) -> Candidates:
    """Random labels: a model can only fit its training rows by memorising them."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(2 * n, 20)).astype(np.float32)
    y = rng.integers(0, 2, 2 * n)
    return Candidates(x, y, np.r_[np.ones(n), np.zeros(n)].astype(np.int8), TaskType.BINARY,
                      "toy")


RECIPE = TrainConfig(local_epochs=150, batch_size=16, lr=0.1, momentum=0.9)


@pytest.fixture(scope="module")
def overfit() -> tuple[TorchLearner, Parameters, Candidates]:
    data = _random_label_data(48)
    learner = _learner()
    members = data.is_member == 1
    fit = learner.fit(learner.initial_parameters(), data.x[members], data.y[members], RECIPE,
                      seed=0)
    return learner, fit.parameters, data


def test_loss_attack_succeeds_on_an_overfit_model(overfit):
    learner, params, data = overfit
    result = evaluate_attack(data, attack(learner, params, data, AuditSettings("loss")),
                             AuditSettings("loss"), {"private": False})
    assert result.auc > 0.75  # 0.86 measured
    assert result.tpr_at_fpr["0.01"] > 0.01


def test_loss_attack_is_chance_on_an_untrained_model():
    data = _random_label_data(300, seed=5)
    learner = _learner()
    scores = attack(learner, learner.initial_parameters(), data, AuditSettings("loss"))
    assert abs(roc_curve(data.is_member, scores).auc - 0.5) < 0.08


def test_lira_succeeds_on_an_overfit_model(overfit):
    learner, params, data = overfit
    settings = AuditSettings("lira", shadows=4)
    calls: list[int] = []
    scores = attack(learner, params, data, settings, make_shadow=_learner, train=RECIPE,
                    progress=lambda done, total: calls.append(done))
    assert roc_curve(data.is_member, scores).auc > 0.8
    assert calls == [1, 2, 3, 4]


def test_lira_without_a_recipe_is_a_config_error(overfit):
    learner, params, data = overfit
    with pytest.raises(ConfigError, match="shadow"):
        attack(learner, params, data, AuditSettings("lira", shadows=2))


@pytest.mark.parametrize("kwargs", [{"attack": "mia"}, {"attack": "lira", "shadows": 1},
                                    {"epochs": 0}])
def test_bad_settings_are_config_errors(kwargs):
    with pytest.raises(ConfigError):
        AuditSettings(**kwargs)


# ------------------------------------------------------------------------- run folders
STUDY = {"study": {"name": "audit-test", "seed": 0, "rounds": 2},
         "data": {"source": "builtin", "sites": 2, "partition": "iid", "test_fraction": 0.3},
         "model": {"name": "mlp", "hidden": [8]}, "train": {"batch_size": 32, "lr": 0.1},
         "strategy": {"name": "fedavg"}, "baselines": {"local": False, "centralized": False},
         "run": {"checkpoint_every": 0, "workers": 1}}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    import fedcare

    out = tmp_path_factory.mktemp("run")
    fedcare.simulate(STUDY, output_dir=out)
    return out


def test_audit_run_writes_json_png_and_html(run_dir):
    result = audit_run(run_dir, AuditSettings("loss"))

    assert (result.members, result.non_members) == (398, 171)  # 569 rows, 30% held out
    assert 0.3 < result.auc < 0.8 and result.privacy == {"private": False,
                                                         "label": "not private"}
    doc = json.loads((run_dir / "audit" / "privacy-loss-all-sites.json").read_text())
    assert doc["auc"] == pytest.approx(result.auc) and set(doc["tpr_at_fpr"]) == {"0.01",
                                                                                  "0.001"}
    assert (run_dir / "audit" / "privacy-loss-all-sites.png").read_bytes()[:4] == b"\x89PNG"
    assert "not private" in (run_dir / "audit" / "privacy-loss-all-sites.html").read_text()


def test_audit_run_one_site_with_lira(run_dir):
    result = audit_run(run_dir, AuditSettings("lira", shadows=2, epochs=1, site="site-2"),
                       write=False)
    assert result.site == "site-2" and result.shadows == 2 and 0 <= result.auc <= 1
    assert not (run_dir / "audit" / "privacy-lira-site-2.json").exists()


def test_unknown_site_names_the_sites(run_dir):
    with pytest.raises(DataError, match="site-1"):
        audit_run(run_dir, AuditSettings(site="nowhere"), write=False)


def test_study_privacy_reads_epsilon_from_history():
    assert study_privacy({"privacy": {"epsilon": 2.5, "delta": 1e-5}}) == {
        "private": True, "epsilon": 2.5, "delta": 1e-5}
    assert study_privacy({"privacy": {"epsilon": "inf"}}) == {"private": False,
                                                              "epsilon": "inf"}
    per_site = {"privacy": {"sites": {"a": {"epsilon": 1.0}, "b": {"epsilon": 3.0}}}}
    assert study_privacy(per_site)["epsilon"] == 3.0
    assert study_privacy(per_site, "a") == {"private": True, "epsilon": 1.0, "site": "a"}
    assert study_privacy({"meta": {"privacy": {"epsilon": 1}}})["epsilon"] == 1.0
    assert study_privacy({"privacy": {"mode": "none"}})["private"] is False
    assert study_privacy(None)["private"] is False
    frag = html_fragment({"attack": "loss", "variant": "threshold", "site": "a", "members": 1,
                          "non_members": 1, "auc": 0.5, "tpr_at_fpr": {"0.01": 0.0},
                          "privacy": {"epsilon": 2.5, "delta": 1e-5}}, None)
    assert "&epsilon; = 2.5, &delta; = 1.0e-05" in frag and "0.500" in frag


def test_load_run_refuses_missing_and_broken_folders(tmp_path, run_dir):
    with pytest.raises(ConfigError, match="does not exist"):
        load_run(tmp_path / "nope")
    with pytest.raises(ConfigError, match=r"no model\.safetensors"):
        load_run(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"junk")
    with pytest.raises(ConfigError, match=r"no config\.json"):
        load_run(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match=r"config\.json is unreadable"):
        load_run(tmp_path)
    (tmp_path / "config.json").write_text((run_dir / "config.json").read_text())
    with pytest.raises(ConfigError, match=r"model\.safetensors is unreadable"):
        load_run(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(
        save_parameters(Parameters({"w": np.ones(3, np.float32)})))
    with pytest.raises(ConfigError, match="does not fit the model"):
        audit_run(tmp_path, write=False)


# ----------------------------------------------------------------------- networked runs
def _networked_run(tmp_path):
    """A networked study's released files in one folder (no config.json: the configuration is
    in history.json's meta, with the hub's normalizer) plus one site's own table."""
    import pandas as pd

    from fedcare.config import parse_config
    from fedcare.engine.learner_factory import ModelShape, make_learner

    rng = np.random.default_rng(0)
    feats = [f"f{i}" for i in range(5)]
    frame = pd.DataFrame(rng.normal(3, 2, (60, 5)), columns=feats)
    frame["label"] = rng.integers(0, 2, 60)
    frame.to_csv(tmp_path / "charite.csv", index=False)
    raw = {"study": {"name": "net", "seed": 7, "rounds": 3},
           "data": {"source": "federation", "dataset": "d", "label": "label",
                    "features": feats, "test_fraction": 0.25},
           "model": {"name": "logreg"}}
    cfg = parse_config(raw)
    learner = make_learner(cfg, ModelShape.of_federated(cfg.data))
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.safetensors").write_bytes(save_parameters(learner.initial_parameters()))
    norm = {"mean": [3.0] * 5, "std": [2.0] * 5}
    history = {"meta": {"config": cfg.model_dump(mode="json"), "normalizer": norm},
               "sites": [{"name": "st-marys"}, {"name": "charite"}]}
    (run / "history.json").write_text(json.dumps(history))
    return run, cfg, tmp_path / "charite.csv"


def test_networked_run_is_audited_on_the_sites_own_rows_split_as_its_node_did(tmp_path):
    from fedcare.attacks.membership import candidates_of
    from fedcare.node.site_data import build_site_data

    run, cfg, table = _networked_run(tmp_path)
    history = json.loads((run / "history.json").read_text())

    got = candidates_of(cfg, "charite", history=history, site_data=table)
    node = build_site_data(cfg.data, "charite", 1, cfg.study.seed, table)  # index 1

    members = got.is_member == 1
    np.testing.assert_allclose(got.x[members], (node.x_train - 3.0) / 2.0, rtol=1e-6)
    np.testing.assert_array_equal(got.y[~members], node.y_test)
    result = audit_run(run, AuditSettings(site="charite", site_data=table))
    assert (result.members, result.non_members) == (45, 15)
    assert (run / "audit" / "privacy-loss-charite.json").is_file()


def test_networked_run_without_site_data_is_a_clear_error(tmp_path):
    run, _, table = _networked_run(tmp_path)
    with pytest.raises(ConfigError, match="--site-data"):
        audit_run(run, AuditSettings(site="charite"), write=False)
    with pytest.raises(DataError, match="did not take part"):
        audit_run(run, AuditSettings(site="karolinska", site_data=table), write=False)
    with pytest.raises(ConfigError, match="needs site"):
        AuditSettings(site_data=table)


# ---------------------------------------------------------------------------------- CLI
def test_cli_reports_results(run_dir):
    res = CliRunner().invoke(app, ["privacy", "--run", str(run_dir)])
    assert res.exit_code == 0, res.output
    assert "ROC AUC" in res.output and "not private" in res.output


@pytest.mark.parametrize(("args", "message"), [
    (["--run", "/nonexistent/run"], "does not exist"),
    (["--attack", "lira", "--shadows", "1"], "at least 2"),
    (["--site", "nowhere"], "no site named"),
])
def test_cli_bad_inputs_exit_2(run_dir, args, message):
    full = ["privacy", *args] if "--run" in args else ["privacy", "--run", str(run_dir), *args]
    res = CliRunner().invoke(app, full)
    assert res.exit_code == 2
    assert message in " ".join(res.output.split())


def test_cli_unknown_attack_exits_2(run_dir):
    res = CliRunner().invoke(app, ["privacy", "--run", str(run_dir), "--attack", "mia"])
    assert res.exit_code == 2
