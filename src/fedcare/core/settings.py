"""The one way fedcare declares a settings file or section: a frozen pydantic model that
refuses unknown keys.

Every plugin (strategy, model, data source) declares its options as a subclass of
:class:`Section`, once: the declaration gives the validation, the error message, the config
reference and ``--help`` (scikit-learn's ``_parameter_constraints`` idea, with pydantic doing
the checking). The study schema (:mod:`fedcare.config`) assembles these sections; lower layers
receive the validated section itself instead of restating its rules in a second dataclass.
"""

from __future__ import annotations

import typing
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """A frozen settings section: unknown keys are an error, never silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def literal_values(annotation: Any) -> tuple[Any, ...]:
    """The allowed values of a ``Literal[...]`` annotation (also inside ``Optional``), else ()."""
    if typing.get_origin(annotation) is Literal:
        return typing.get_args(annotation)
    values: tuple[Any, ...] = ()
    for arg in typing.get_args(annotation):
        values += literal_values(arg)
    return values
