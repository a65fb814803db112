"""fedcare: federated learning and analytics for healthcare institutions."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from pathlib import Path

    from fedcare.engine.history import History
    from fedcare.engine.predict import SavedModel


def simulate(config: Any, **kwargs: Any) -> History:
    """Run a study in simulation; see :func:`fedcare.sim.runner.simulate`."""
    from fedcare.sim.runner import simulate as _simulate

    return _simulate(config, **kwargs)


def load_model(path: str | Path) -> SavedModel:
    """A study's saved model (a run folder or its ``model.safetensors``), ready to apply to
    new patients: ``load_model("runs/x").predict_proba(df)``; see
    :class:`fedcare.engine.predict.SavedModel`."""
    from fedcare.engine.predict import load_model as _load_model

    return _load_model(path)


__all__ = ["__version__", "load_model", "simulate"]
