"""``fedcare simulate --help`` and ``fedcare config-reference`` list every allowed value of
every choice a study file has: strategy and model names, data sources, partitions, privacy
modes, protocols... walked from the schema itself, so a new choice (or a new registered
plugin) that the reference forgets fails here."""

from __future__ import annotations

import re
import typing
from typing import Any

import pytest
from pydantic import BaseModel
from typer.testing import CliRunner

from fedcare.cli.main import app
from fedcare.config import StudyConfig, describe_keys
from fedcare.core.settings import literal_values
from fedcare.data.sources.registry import all_sources
from fedcare.learners.options import all_models
from fedcare.strategies.registry import all_strategies


def _models(annotation: Any) -> list[type[BaseModel]]:
    """The settings models an annotation holds (in unions, lists, Annotated...)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models(arg)]


def choices() -> dict[str, set[str]]:
    """Every Literal-typed key of a study file (each union member's as ``key[tag]``) with its
    allowed values."""
    found: dict[str, set[str]] = {}
    todo: list[tuple[str, type[BaseModel]]] = [("", StudyConfig)]
    todo += [("data", m) for m in all_sources().values()]
    todo += [("strategy", s.Options) for s in all_strategies().values()]
    todo += [("model", m) for m in all_models().values()]
    seen: set[type[BaseModel]] = set()
    while todo:
        prefix, model = todo.pop()
        if model in seen:
            continue
        seen.add(model)
        for name, field in model.model_fields.items():
            key = f"{prefix}.{name}".lstrip(".")
            values = {str(v) for v in literal_values(field.annotation)}
            if values:
                found.setdefault(key, set()).update(values)
            todo += [(key, sub) for sub in _models(field.annotation)]
    return found


def _words(text: str) -> set[str]:
    # values such as binary:logistic keep their colon; "mlp:" is still the word mlp
    return (set(re.findall(r"[A-Za-z0-9_+\-]+", text))
            | set(re.findall(r"[A-Za-z0-9_+\-]+(?::[A-Za-z0-9_+\-]+)+", text)))


@pytest.fixture(scope="module")
def simulate_help() -> set[str]:
    result = CliRunner().invoke(app, ["simulate", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    return _words(result.output)


def test_the_schema_has_the_choices_this_test_is_about() -> None:
    found = choices()
    assert found["strategy.name"] == set(all_strategies())
    assert found["model.name"] == set(all_models())
    assert found["data.source"] == set(all_sources())
    assert {"iid", "dirichlet", "attribute"} <= found["data.partition"]
    assert {"none", "dp_sgd", "dp_fedavg_central", "dp_fedavg_distributed"} == found[
        "privacy.mode"]


@pytest.mark.parametrize("key", sorted(choices()))
def test_simulate_help_lists_every_allowed_value(key: str, simulate_help: set[str]) -> None:
    missing = sorted(choices()[key] - simulate_help)
    assert not missing, f"`fedcare simulate --help` does not list {key} = {missing}"


def test_the_config_reference_lists_every_allowed_value() -> None:
    reference = _words(" ".join(f"{k} {d} {s}" for k, d, s in describe_keys()))
    missing = {k: sorted(v - reference) for k, v in choices().items() if v - reference}
    assert not missing
