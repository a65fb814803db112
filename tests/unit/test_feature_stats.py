"""Federation-wide feature statistics from per-site sums (what networked studies scale by)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedcare.core.dataset import SiteData, TaskType
from fedcare.core.messages import Task, TaskKind
from fedcare.core.params import Parameters
from fedcare.core.wire import decode_reply, encode_task
from fedcare.engine.executor import (
    MIN_STATS_ROWS,
    NORMALIZER,
    STATS,
    SiteExecutor,
    pool_stats,
    stats_spec,
)
from fedcare.learners.torch_learner import TorchLearner
from tests.unit.helpers import make_sites

site_blocks = st.lists(
    hnp.arrays(np.float32, st.tuples(st.integers(MIN_STATS_ROWS, 40), st.just(3)),
               elements=st.floats(-1e3, 1e3, width=32)), min_size=1, max_size=4)


@given(site_blocks)
def test_pooled_statistics_equal_numpy_on_all_rows(blocks: list[np.ndarray]) -> None:
    per_site = [Parameters({"sum": b.astype(np.float64).sum(0),
                            "sumsq": (b.astype(np.float64) ** 2).sum(0),
                            "count": np.array([float(len(b))])}) for b in blocks]
    pooled = pool_stats(per_site)
    allrows = np.concatenate(blocks).astype(np.float64)
    std = allrows.std(0)
    np.testing.assert_allclose(pooled["mean"], allrows.mean(0), rtol=1e-5, atol=1e-3)
    expected_std = np.where(std <= 1e-12 * np.maximum(1, np.abs(allrows.mean(0))), 1.0, std)
    np.testing.assert_allclose(pooled["std"], expected_std, rtol=1e-3, atol=1e-2)


def _executor(site: SiteData) -> SiteExecutor:
    learner = TorchLearner.from_zoo("logreg", site.input_shape, 1, TaskType.BINARY, {}, seed=0)
    return SiteExecutor(site, learner, site_index=0, expected=learner.initial_parameters().spec)


def test_a_site_reports_only_sums_and_refuses_small_cells() -> None:
    site = make_sites(n_sites=1, rows=30)[0]
    ex = _executor(site)
    model = ex.learner.initial_parameters()  # every task carries the model it concerns
    task = Task("s/r1/stats/site-1", "s", 1, "site-1", TaskKind.STATS, model)
    reply = decode_reply(ex.handle(encode_task(task)), Parameters({}).spec,
                         {STATS: stats_spec(5)})
    assert set(reply.aux[STATS]) == {"sum", "sumsq", "count"} and not reply.parameters
    tiny = make_sites(n_sites=1, rows=MIN_STATS_ROWS - 1)[0]
    refused = decode_reply(_executor(tiny).handle(encode_task(task)), Parameters({}).spec)
    assert refused.error_type == "FedcareError" and "fewer than" in refused.message


def test_normalizer_in_a_task_scales_the_sites_rows() -> None:
    site = make_sites(n_sites=1, rows=30)[0]
    ex = _executor(site)
    mean, std = site.x_train.mean(0), site.x_train.std(0)
    norm = Parameters({"mean": mean.astype(np.float32), "std": std.astype(np.float32)})
    scaled = ex._normalized(norm)
    np.testing.assert_allclose(scaled.x_train.mean(0), 0, atol=1e-5)
    assert ex._normalized(norm) is scaled  # cached for the study's later tasks
    with pytest.raises(Exception, match="feature count"):
        ex._normalized(Parameters({"mean": np.zeros(2, np.float32),
                                   "std": np.ones(2, np.float32)}))
    assert NORMALIZER == "norm"
