"""What a site trains and evaluates on: arrays already split into train and test."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedcare.core.errors import DataError


class TaskType(enum.StrEnum):
    BINARY = "binary"
    MULTICLASS = "multiclass"
    REGRESSION = "regression"


@dataclass(frozen=True)
class SiteData:
    """One site's data: features as float32, labels as int64 (classification) or float32.

    ``x`` arrays are (n, features) for tables, (n, channels, height, width) for images and
    (n, time, features) for sequences.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    feature_names: tuple[str, ...]
    task: TaskType
    num_classes: int
    #: The label value of each class id (class ``i`` is ``label_values[i]``), shared by every
    #: site; empty when the ids are the values (built-in data, networked studies).
    label_values: tuple[Any, ...] = ()
    #: How the test rows were chosen, in words ("random 20 % split", "fixed file test.csv").
    test_split: str = ""

    def __post_init__(self) -> None:
        if len(self.x_train) != len(self.y_train) or len(self.x_test) != len(self.y_test):
            raise DataError("features and labels have different row counts", site=self.name)
        if len(self.x_train) == 0:
            raise DataError("has zero training rows", site=self.name)
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise DataError("train and test features have different shapes", site=self.name)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.x_train.shape[1:])

    @property
    def num_outputs(self) -> int:
        """Width of the model's output layer: 1 logit for binary and regression."""
        return self.num_classes if self.task is TaskType.MULTICLASS else 1
