"""fedcare: federated learning and analytics for healthcare institutions."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from fedcare.engine.history import History


def simulate(config: Any, **kwargs: Any) -> History:
    """Run a study in simulation; see :func:`fedcare.sim.runner.simulate`."""
    from fedcare.sim.runner import simulate as _simulate

    return _simulate(config, **kwargs)


__all__ = ["__version__", "simulate"]
