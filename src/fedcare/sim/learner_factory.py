"""Build the learner a study's ``[model]`` section asks for."""

from __future__ import annotations

from fedcare.config import StudyConfig
from fedcare.data.dataset import SiteData
from fedcare.learners.base import Learner


def make_learner(cfg: StudyConfig, example: SiteData, threads: int | None = None) -> Learner:
    """One learner for every site in this process; its model is initialised from the seed."""
    m = cfg.model
    if m.name == "sgd_linear":
        from fedcare.learners.sklearn_learner import SklearnLinearLearner

        return SklearnLinearLearner(example.input_shape[0], example.task,
                                    classes=list(range(example.num_classes)), seed=cfg.study.seed)
    from fedcare.learners.torch_learner import TorchLearner

    return TorchLearner.from_zoo(m.name, example.input_shape, example.num_outputs, example.task,
                                 m.options(), cfg.study.seed)
