"""The checks every registered data source must pass (as ``test_strategies.py`` does for
strategies): a source added as one new module in :mod:`fedcare.data.sources` is tested here
the moment it registers, once it has an example below (a source without one fails).

Each source: is the ``[data]`` section for its name, is in the config reference with every
key, resolves its relative paths against the study file's folder, builds the same sites from
the same seed (as many as it declares, each with training rows and the same features), or,
when it is not simulated, refuses to build with a message that says where it runs.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import BaseModel

from fedcare.config import content_hash, describe_keys, parse_config
from fedcare.core.errors import ConfigError
from fedcare.core.settings import literal_values
from fedcare.data.sources.base import DataOptions
from fedcare.data.sources.registry import all_sources, register_source

SOURCES = sorted(all_sources())


def _csv(path: Path, rows: int, seed: int, **extra: Any) -> str:
    import pandas as pd

    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"a": rng.normal(size=rows), "b": rng.normal(size=rows),
                          "y": rng.integers(0, 2, size=rows), **extra})
    frame.to_csv(path, index=False)
    return path.name


def _files(folder: Path) -> dict[str, Any]:
    return {"source": "files", "label": "y",
            "site": [{"name": n, "path": _csv(folder / f"{n}.csv", 30, i)}
                     for i, n in enumerate(("north", "south"))]}


def _table(folder: Path) -> dict[str, Any]:
    return {"source": "table", "label": "y", "path": _csv(folder / "all.csv", 60, 0),
            "sites": 3}


def _npz(folder: Path) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 40), ("test", 12)):
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, 8, 8), dtype=np.uint8)
        arrays[f"{split}_labels"] = rng.integers(0, 2, size=n)
    np.savez(folder / "images.npz", **arrays)
    return {"source": "npz", "path": "images.npz", "sites": 2}


def _image_folder(folder: Path) -> dict[str, Any]:
    from tests.unit.test_image_folder_study import write_site

    sites = []
    for i, name in enumerate(("a", "b")):
        images, labels = write_site(folder / name, 12, i)
        sites.append({"name": name, "folder": images.name,
                      "labels": str(labels.relative_to(folder))})
    return {"source": "image_folder", "size": 8, "window": [0, 300], "site": sites}


def _clinical(folder: Path) -> dict[str, Any]:
    from fedcare.demo.hospitals import write_hospitals

    contract, sites = write_hospitals(folder / "hospitals")
    return {"source": "clinical", "contract": str(contract.relative_to(folder)),
            "site": [{"name": s.name, "source": str(s.source.relative_to(folder))}
                     for s in sites]}


#: A small working ``[data]`` section per source (files written into the study's folder,
#: paths relative to it). A new source adds its example here.
EXAMPLES: dict[str, Callable[[Path], dict[str, Any]]] = {
    "builtin": lambda _: {"source": "builtin", "sites": 3},
    "synthetic": lambda _: {"source": "synthetic", "sites": 3, "rows_per_site": 20,
                            "n_features": 4},
    "files": _files,
    "table": _table,
    "npz": _npz,
    "image_folder": _image_folder,
    "clinical": _clinical,
    "federation": lambda _: {"source": "federation", "dataset": "d", "label": "y",
                             "features": ["a", "b"]},
}


@pytest.fixture(scope="module", params=SOURCES)
def example(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
            ) -> tuple[str, Path, dict[str, Any]]:
    name = request.param
    if name not in EXAMPLES:
        pytest.fail(f"data source {name!r} has no example in {__file__}: add one")
    folder = tmp_path_factory.mktemp(name)
    return name, folder, EXAMPLES[name](folder)


def test_every_source_is_declared_once_with_a_summary() -> None:
    sources = all_sources()
    assert sources, "no data source registered"
    for name, cls in sources.items():
        assert cls.source_name() == name
        assert literal_values(cls.model_fields["source"].annotation) == (name,)
        assert cls.source_summary(), name
        assert cls.build is not DataOptions.build, f"{name} does not say how it builds"
        assert register_source(cls) is cls  # registering again is harmless


def test_the_registry_refuses_a_second_source_of_the_same_name() -> None:
    from typing import Literal

    from pydantic import Field

    class Imposter(DataOptions):
        source: Literal["builtin"] = Field(description="Not the real one.")

        def build(self, seed: int) -> list[Any]:
            return []

    with pytest.raises(TypeError, match="registered twice"):
        register_source(Imposter)


def test_every_source_and_key_is_in_the_config_reference() -> None:
    rows = {key: desc for key, _, desc in describe_keys()}
    for name, cls in all_sources().items():
        assert name in rows["data.source"], name
        for key in cls.model_fields:
            assert f"data[source={name}].{key}" in rows, (name, key)


def test_an_unknown_source_is_refused_with_every_name() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"data": {"source": "nosuch"}})
    for name in SOURCES:
        assert name in str(info.value)


def test_the_example_is_the_sources_section(example: tuple[str, Path, dict[str, Any]]
                                            ) -> None:
    name, folder, section = example
    cfg = parse_config({"data": section}, base_dir=folder)

    assert type(cfg.data) is all_sources()[name]
    assert content_hash(cfg) == content_hash(parse_config({"data": section}, base_dir=folder))
    for path in _paths(cfg.data):
        assert path.is_absolute() and path.is_relative_to(folder), (name, path)
        assert path.exists(), (name, path)


def _paths(value: Any) -> list[Path]:
    """Every path a section holds (in its sites too)."""
    if isinstance(value, Path):
        return [value]
    if isinstance(value, list):
        return [p for v in value for p in _paths(v)]
    if isinstance(value, BaseModel):
        return [p for k in type(value).model_fields for p in _paths(getattr(value, k))]
    return []


def test_a_simulated_source_builds_the_same_sites_from_the_same_seed(
        example: tuple[str, Path, dict[str, Any]]) -> None:
    name, folder, section = example
    data = parse_config({"data": section}, base_dir=folder).data
    if not data.capabilities.simulated:
        with pytest.raises(ConfigError, match="fedcare study submit"):
            data.build(0)
        return

    first, again = data.build(3), data.build(3)

    declared = data.declared_sites()
    assert declared is None or len(first) == declared
    assert len({s.name for s in first}) == len(first)
    for a, b in zip(first, again, strict=True):
        assert a.name == b.name
        np.testing.assert_array_equal(a.x_train, b.x_train)
        np.testing.assert_array_equal(a.y_test, b.y_test)
        assert len(a.y_train) > 0, (name, a.name)
        assert a.x_train.shape[1:] == first[0].x_train.shape[1:]
        assert a.feature_names == first[0].feature_names
    assert isinstance(data.test_split(), str) and data.test_split()


def test_impute_and_categories_need_a_source_that_reads_raw_columns(
        example: tuple[str, Path, dict[str, Any]]) -> None:
    name, folder, section = example
    if all_sources()[name].capabilities.raw_columns:
        parse_config({"data": {**section, "impute": "mean"}}, base_dir=folder)
        return
    with pytest.raises(ConfigError, match="apply to tables read from files") as info:
        parse_config({"data": {**section, "impute": "mean"}}, base_dir=folder)
    import re

    named = set(re.findall(r"\w+", str(info.value).split("data.source = ", 1)[1]))
    assert named - {"or"} == {n for n, c in all_sources().items() if c.capabilities.raw_columns}
