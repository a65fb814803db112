"""Site-side training adapters (PyTorch, scikit-learn) and the built-in model zoo."""

from fedcare.learners.base import FitResult, Learner
from fedcare.learners.models import MODEL_NAMES, build_model
from fedcare.learners.sklearn_learner import SklearnLinearLearner
from fedcare.learners.torch_learner import TorchLearner

__all__ = ["MODEL_NAMES", "FitResult", "Learner", "SklearnLinearLearner", "TorchLearner",
           "build_model"]
