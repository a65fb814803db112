"""The site's update chain (engine.filters): each filter, its provenance entry, the order the
chain builder puts them in for each kind of study, and the executor running the chain."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from fedcare.config import parse_config
from fedcare.core.dataset import TaskType
from fedcare.core.errors import ProtocolError
from fedcare.core.learning import DpSgdFacts
from fedcare.core.messages import Task, TaskKind, TrainConfig, Update, UpdateKind
from fedcare.core.params import Parameters
from fedcare.engine.executor import SiteExecutor
from fedcare.engine.filters import (
    DpClip,
    DpMetrics,
    DpNoise,
    FilterContext,
    HeEncrypt,
    SecureMask,
    site_chain,
)
from fedcare.engine.privacy import DP_SITES, SitePrivacy, site_privacy
from fedcare.engine.secure import PROTOCOL_AUX, SecureSettings, SecureSite
from fedcare.learners.torch_learner import TorchLearner
from fedcare.privacy.dp.mechanisms import l2_norm
from fedcare.privacy.dp.spec import PrivacySpec
from tests.unit.helpers import make_sites

G = Parameters({"w": np.zeros(4, np.float32), "b": np.zeros(1, np.float32)})
X = Parameters({"w": np.array([3.0, 0.0, 4.0, 0.0], np.float32),
                "b": np.array([0.0], np.float32)})


def _task(meta: dict[str, Any] | None = None, round_: int = 1) -> Task:
    return Task(task_id=f"s/r{round_}/fit/site-1", study="s", round=round_, site="site-1",
                kind=TaskKind.FIT, parameters=G, train=TrainConfig(), aux={}, seed=0,
                evaluate=False, strategy="fedavg", meta=dict(meta or {}))


def _trained(**metrics: float) -> Update:
    return Update(task_id="s/r1/fit/site-1", site="site-1", round=1, kind=UpdateKind.FULL,
                  parameters=X, num_examples=10, metrics=metrics,
                  provenance=("fit:mlp", "strategy:fedavg"))


def test_dp_metrics_keeps_only_the_accounting_facts() -> None:
    u = _trained(train_loss=0.3, **DpSgdFacts(0.1, 1.2, 1.0, 7).to_metrics())
    out = DpMetrics()(u, FilterContext(_task()))
    assert list(out.metrics) == list(DpSgdFacts.KEYS)
    assert out.provenance == (*u.provenance, "metrics:dp-facts-only")
    assert out.parameters is u.parameters and u.metrics["train_loss"] == 0.3  # a new update


def test_dp_clip_sends_the_clipped_difference() -> None:
    out = DpClip(0.5)(_trained(), FilterContext(_task()))
    assert out.kind is UpdateKind.DELTA and out.provenance[-1] == "dp-clip:0.5"
    assert l2_norm(out.parameters) == pytest.approx(0.5)
    np.testing.assert_allclose(out.parameters["w"], [0.3, 0, 0.4, 0], rtol=1e-6)
    with pytest.raises(ProtocolError, match="trained model"):
        DpClip(0.5)(out, FilterContext(_task()))


@pytest.mark.parametrize("mechanism", ["dp_fedavg_central", "dp_fedavg_distributed"])
def test_dp_noise_puts_the_difference_on_the_grid_with_a_share_only_when_distributed(
        mechanism: str) -> None:
    spec = PrivacySpec(mechanism, clip=0.5, noise_multiplier=1.0, delta=1e-5)
    clipped = DpClip(0.5)(_trained(), FilterContext(_task()))
    out = DpNoise(spec, 8)(clipped, FilterContext(_task({DP_SITES: 3})))
    assert out.provenance[-1] == f"dp:{mechanism}" and out.kind is UpdateKind.DELTA
    flat = out.parameters.flatten("float64")
    assert np.array_equal(flat * 2**8, np.rint(flat * 2**8))  # on the grid
    moved = np.abs(flat - clipped.parameters.flatten("float64")).max()
    if mechanism == "dp_fedavg_central":
        assert moved <= 2**-8 and l2_norm(out.parameters) <= 0.5  # rounding only
    else:
        assert moved > 2**-8  # a noise share of std 0.5/sqrt(3)
    assert out.parameters["w"].dtype == np.float32
    exact = DpNoise(spec, 8, keep_float64=True)(clipped, FilterContext(_task({DP_SITES: 3})))
    assert exact.parameters["w"].dtype == np.float64
    with pytest.raises(ProtocolError, match="how many sites"):
        DpNoise(spec, 8)(clipped, FilterContext(_task()))
    with pytest.raises(ProtocolError, match="DpClip first"):
        DpNoise(spec, 8)(_trained(), FilterContext(_task({DP_SITES: 3})))


def test_secure_mask_sends_the_protocol_message_only_and_keeps_the_entry() -> None:
    settings = SecureSettings("secagg")
    site = SecureSite("site-1", settings, ["site-1", "site-2", "site-3"])
    mask = SecureMask(site)
    task = _task(settings.meta(["site-1", "site-2", "site-3"]))
    out = mask(_trained(train_loss=0.1), FilterContext(task))
    assert out.parameters.spec.total_size == 0 and set(out.aux) == {PROTOCOL_AUX}
    assert out.provenance == ("fit:mlp", "strategy:fedavg", "secure:fit")
    assert out.num_examples == 10 and out.metrics == {"train_loss": 0.1}
    entered = site.entered(1)
    assert entered is not None and entered[-1] == 10.0  # [w·(x − g), w]
    np.testing.assert_allclose(entered[:4], 10 * X["w"])
    # a restarted hub's next attempt gets the same vector under fresh keys, no training
    again = mask.again(_task(settings.meta(["site-1", "site-2", "site-3"], attempt=2)))
    assert again is not None and again.provenance == ("secure:fit",)
    assert again.num_examples == 10 and np.array_equal(site.entered(1), entered)
    with pytest.raises(ProtocolError, match="another model"):
        mask.again(_task({**settings.meta(["site-1", "site-2"], attempt=3)}))
    assert mask.again(_task(settings.meta(["site-1", "site-2", "site-3"]), round_=2)) is None


STUDY: dict[str, Any] = {"study": {"name": "c", "rounds": 1},
                         "data": {"source": "builtin", "sites": 3, "standardize": False},
                         "model": {"name": "logreg"}}
DPF = {"clip": 0.05, "noise_multiplier": 0.7}


@pytest.mark.parametrize(("privacy", "secure", "names"), [
    ({}, None, []),
    ({"mode": "dp_fedavg_central", **DPF}, None, ["dp_metrics", "dp_clip", "dp_noise"]),
    ({"mode": "dp_fedavg_distributed", **DPF}, "secagg",
     ["dp_metrics", "dp_clip", "dp_noise", "secure_mask"]),
    ({"mode": "dp_fedavg_central", **DPF}, "secagg+",
     ["dp_metrics", "dp_clip", "dp_noise", "secure_mask"]),
    ({}, "ckks", ["he_encrypt"]),
    ({"mode": "dp_fedavg_distributed", **DPF}, "ckks",
     ["dp_metrics", "dp_clip", "dp_noise", "he_encrypt"]),
    ({"mode": "dp_sgd", "clip": 1.0, "noise_multiplier": 1.0}, None, ["dp_metrics"]),
])
def test_the_chain_follows_the_approved_study_with_the_privacy_filters_last(
        privacy: dict[str, Any], secure: str | None, names: list[str]) -> None:
    cfg = parse_config({**STUDY, **({"privacy": privacy} if privacy else {}),
                        **({"secure_aggregation": {"protocol": secure}} if secure else {})})
    settings = SecureSettings.of(cfg, he_context=b"x" if secure == "ckks" else None)
    site = SecureSite("site-1", settings) if settings is not None else None
    chain = site_chain(site_privacy(cfg, 100, 3), site, study_filters=[_Tag()])
    assert [f.name for f in chain] == ["tag", *names]
    noise = [f for f in chain if isinstance(f, DpNoise)]
    # masking protocols encode the exact float64 grid values; CKKS and plain the model dtype
    assert all(f.keep_float64 == (secure in ("secagg", "secagg+")) for f in noise)
    assert all(type(f) is (HeEncrypt if secure == "ckks" else SecureMask)
               for f in chain if isinstance(f, SecureMask))


class _Tag:
    """A study filter (as compression would be): runs first, notes itself."""

    name = "tag"

    def __call__(self, update: Update, ctx: FilterContext) -> Update:
        from dataclasses import replace

        return replace(update, provenance=(*update.provenance, "tag"))


def _learner() -> TorchLearner:
    return TorchLearner.from_zoo("mlp", (5,), 1, TaskType.BINARY, {"hidden": [4]}, seed=0)


def test_the_executor_runs_its_chain_on_fit_replies_only() -> None:
    site = make_sites(n_sites=1)[0]
    learner = _learner()
    spec = PrivacySpec("dp_fedavg_central", clip=0.05, noise_multiplier=0.7, delta=1e-5)
    ex = SiteExecutor(site, learner, site_index=0, expected=learner.initial_parameters().spec,
                      privacy=SitePrivacy(spec, None, len(site.y_train), study_sites=3))
    assert [f.name for f in ex.chain] == ["dp_metrics", "dp_clip", "dp_noise"]
    g = learner.initial_parameters()
    task = Task(task_id="s/r1/fit/site-1", study="s", round=1, site=site.name,
                kind=TaskKind.FIT, parameters=g, train=TrainConfig(batch_size=8), aux={},
                seed=0, evaluate=True, strategy="fedavg", meta={DP_SITES: 3})
    u = ex.run(task)
    assert u.provenance == ("fit:mlp", "strategy:fedavg", "metrics:dp-facts-only",
                            "dp-clip:0.05", "dp:dp_fedavg_central")
    assert u.kind is UpdateKind.DELTA and set(u.metrics) == {"steps"} and u.eval_metrics
    assert l2_norm(u.parameters) <= 0.05 and u.seconds > 0
    from dataclasses import replace

    ev = ex.run(replace(task, task_id="s/r2/evaluate/site-1", kind=TaskKind.EVALUATE,
                        round=2, meta={}))
    assert ev.provenance == ("evaluate:mlp",) and ev.eval_metrics


def test_dp_sgd_facts_travel_as_metrics_and_come_back_bounded() -> None:
    facts = DpSgdFacts(0.25, 1.1, 1.0, 12)
    assert DpSgdFacts.from_metrics({"train_loss": 1.0, **facts.to_metrics()}) == facts
    assert DpSgdFacts.from_metrics({"train_loss": 1.0, "steps": 3.0}) is None
    # what a node without dp_clip sends still reads
    old = {"dp_sample_rate": 0.25, "dp_noise_multiplier": 1.1, "steps": 12.0}
    assert DpSgdFacts.from_metrics(old) == DpSgdFacts(0.25, 1.1, 0.0, 12)
    for bad in ({"dp_sample_rate": 0.0}, {"dp_sample_rate": 1.5}, {"steps": 2.5},
                {"steps": -1.0}, {"dp_noise_multiplier": -1.0},
                {"dp_noise_multiplier": 1e31}, {"steps": None}):
        with pytest.raises(ValueError, match="DP-SGD"):
            DpSgdFacts.from_metrics({**facts.to_metrics(), **bad})  # type: ignore[dict-item]


@pytest.mark.parametrize("keep_float64", [False, True])
def test_clip_then_noise_is_the_one_step_privatize_update(keep_float64: bool) -> None:
    from fedcare.privacy.dp.hooks import privatize_update

    spec = PrivacySpec("dp_fedavg_central", clip=0.5, noise_multiplier=1.0, delta=1e-5)
    ctx = FilterContext(_task({DP_SITES: 3}))
    out = DpNoise(spec, 12, keep_float64)(DpClip(0.5)(_trained(), ctx), ctx)
    want, _ = privatize_update(G, X, spec, 3, frac_bits=12, keep_float64=keep_float64)
    for k in want:
        assert out.parameters[k].dtype == want[k].dtype
        assert out.parameters[k].tobytes() == want[k].tobytes()
