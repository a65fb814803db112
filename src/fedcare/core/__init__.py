"""The vocabulary every fedcare layer speaks: parameters, tasks, updates, errors, wire format.

Nothing in here imports any other part of fedcare.
"""

from fedcare.core.errors import (
    ConfigError,
    DataError,
    FedcareError,
    ProtocolError,
    TransportError,
    ValidationError,
)
from fedcare.core.messages import ErrorReply, Task, TrainConfig, Update, UpdateKind
from fedcare.core.params import Parameters, ParamSpec

__all__ = [
    "ConfigError",
    "DataError",
    "ErrorReply",
    "FedcareError",
    "ParamSpec",
    "Parameters",
    "ProtocolError",
    "Task",
    "TrainConfig",
    "TransportError",
    "Update",
    "UpdateKind",
    "ValidationError",
]
