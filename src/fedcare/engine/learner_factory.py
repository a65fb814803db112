"""Build the learner a study's ``[model]`` section asks for.

Shared by simulation, the hub (which needs the model's layout and initial weights) and the
node (which trains it), so all three build exactly the same model from the same seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from fedcare.config import FederatedData, StudyConfig
from fedcare.core.dataset import SiteData, TaskType
from fedcare.core.learning import Learner
from fedcare.learners.options import ModelOptions

if TYPE_CHECKING:
    from fedcare.engine.custom_learner import SiteCodeSettings
    from fedcare.learners.torch_learner import DpSgdOptions


@dataclass(frozen=True)
class ModelShape:
    """What the model must accept and produce; known without seeing any site's rows."""

    input_shape: tuple[int, ...]
    task: TaskType
    num_classes: int

    @property
    def num_outputs(self) -> int:
        return self.num_classes if self.task is TaskType.MULTICLASS else 1

    @classmethod
    def of_site(cls, site: SiteData) -> ModelShape:
        return cls(site.input_shape, site.task, site.num_classes)

    @classmethod
    def of_federated(cls, data: FederatedData) -> ModelShape:
        task = TaskType(data.task)
        shape = ((1, data.image_size, data.image_size) if data.image_size is not None
                 else (data.input_width(),))
        return cls(shape, task, data.classes if task is TaskType.MULTICLASS else 2)


def make_learner(cfg: StudyConfig, shape: ModelShape, *, rows: int | None = None,
                 seeded: bool = False, code: SiteCodeSettings | None = None) -> Learner:
    """One learner for every site in this process; its model is initialised from the seed.

    A DP-SGD study's learner is per site (``rows``: the site's training rows), since a
    budget-first study derives each site's noise from its own row count; without ``rows``
    (the hub, which only needs the layout) the learner trains without DP. DP-SGD's row
    sampling and noise come from secret seeds (nodes and simulations alike: a simulation's DP
    result is a privacy claim too); ``seeded=True`` derives them from the public study seed,
    for reproducible tests only (see :class:`~fedcare.learners.torch_learner.DpSgdOptions`).
    ``code``: the site's settings for running a study's own code (model ``custom``).
    """
    m = cfg.model
    dp = None
    if cfg.privacy.mode == "dp_sgd" and rows is not None:
        from fedcare.engine.assembly import derive_noise
        from fedcare.learners.torch_learner import DpSgdOptions

        dp = DpSgdOptions(derive_noise(cfg, rows), cfg.privacy.clip, seeded=seeded)
    return learner_for(m, shape, cfg.study.seed, dp=dp, code=code)


def learner_for(model: ModelOptions, shape: ModelShape, seed: int = 0, *,
                dp: DpSgdOptions | None = None, code: SiteCodeSettings | None = None) -> Learner:
    """The learner of ``model`` (validated options) for ``shape``: what a study trains and what
    a saved model bundle (:mod:`fedcare.engine.bundle`) is rebuilt with."""
    if model.capabilities.backend == "custom":
        from fedcare.engine.custom_learner import CustomCodeLearner
        from fedcare.learners.options import CustomOptions

        if not isinstance(model, CustomOptions):
            raise TypeError(f"no sandboxed learner for model {model.name!r}")
        return CustomCodeLearner(model, shape.input_shape, shape.task, shape.num_outputs, seed,
                                 site=code)
    if model.capabilities.backend == "trees":
        from fedcare.learners.options import XGBoostOptions
        from fedcare.learners.xgboost import XGBoostLearner

        if not isinstance(model, XGBoostOptions):
            raise TypeError(f"no tree learner for model {model.name!r}")
        return XGBoostLearner(shape.input_shape[0], shape.task, model)
    if model.capabilities.backend == "sklearn":
        from fedcare.learners.sklearn_learner import SklearnLinearLearner

        return SklearnLinearLearner(shape.input_shape[0], shape.task,
                                    classes=list(range(shape.num_classes)), seed=seed)
    from fedcare.learners.torch_learner import TorchLearner

    return TorchLearner.from_zoo(model.name, shape.input_shape, shape.num_outputs, shape.task,
                                 model, seed, dp=dp)
