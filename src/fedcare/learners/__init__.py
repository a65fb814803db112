"""Site-side training adapters (PyTorch, scikit-learn) and the built-in model zoo."""

from fedcare.learners.base import FitResult, Learner

__all__ = ["FitResult", "Learner"]
