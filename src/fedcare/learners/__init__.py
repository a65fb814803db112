"""Site-side training adapters (PyTorch, scikit-learn) and the built-in model zoo.

Names are imported on first use, so a torch study never pays for importing scikit-learn
(~1.5 s) and vice versa.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from fedcare.core.learning import FitResult, Learner

_LAZY = {"MODEL_NAMES": "models", "build_model": "models",
         "SklearnLinearLearner": "sklearn_learner", "TorchLearner": "torch_learner"}

__all__ = ["MODEL_NAMES", "FitResult", "Learner", "SklearnLinearLearner", "TorchLearner",
           "build_model"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(f"fedcare.learners.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'fedcare.learners' has no attribute {name!r}")
