"""Every numeric option of a study has an upper bound and refuses non-finite values (F21).

``train.lr = inf`` used to fail late, as a wire error; ``train.local_epochs = 10**9`` was
accepted and trained for ever; the hub accepted ``"lr": 1e999`` at ``POST /v1/studies``. The
schema walk below finds every numeric field of every section (each variant of ``data`` and
``strategy`` included), so an option added later without bounds fails this test.
"""

from __future__ import annotations

import math
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import annotated_types
import httpx
import pytest
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from typer.testing import CliRunner

from fedcare import config as C
from fedcare.cli.main import app as cli
from fedcare.core.errors import ConfigError
from fedcare.core.messages import TrainConfig
from fedcare.learners.options import all_models
from fedcare.strategies import all_strategies

#: A minimal valid document for each section variant (the key under test is then replaced).
VARIANTS: dict[str, list[tuple[type[BaseModel], dict[str, Any]]]] = {
    "study": [(C.StudySection, {})],
    "data": [
        (C.BuiltinData, {"source": "builtin"}),
        (C.SyntheticData, {"source": "synthetic"}),
        (C.FilesData, {"source": "files", "label": "y",
                       "site": [{"name": "a", "path": "a.csv"}]}),
        (C.PooledFileData, {"source": "table", "path": "t.csv", "label": "y"}),
        (C.ImageData, {"source": "npz", "path": "x.npz"}),
        (C.ImageFolderData, {"source": "image_folder",
                             "site": [{"name": "a", "folder": "f", "labels": "l.csv"}]}),
        (C.FederatedData, {"source": "federation", "dataset": "d", "label": "y",
                           "features": ["x"]}),
    ],
    "model": [(cls, {"name": name}) for name, cls in all_models().items()],
    "train": [(C.TrainSection, {})],
    "strategy": [(cls.Options, {"name": name}) for name, cls in all_strategies().items()],
    "secure_aggregation": [(C.SecureAggregationSection, {})],
    "baselines": [(C.BaselinesSection, {})],
    "run": [(C.RunSection, {})],
    "privacy": [(C.PrivacySection, {})],
}


@dataclass(frozen=True)
class Leaf:
    """One numeric value in the schema: a field, or the items of a list field."""

    section: str
    base: tuple[tuple[str, Any], ...]
    key: str
    kind: type  # int or float
    in_list: bool
    high: float | None  # inclusive or exclusive upper bound, None when missing

    @property
    def name(self) -> str:
        tag = dict(self.base).get("source") or dict(self.base).get("name") or ""
        tagged = self.section in ("data", "strategy", "model")
        tag = tag if tagged else ""
        return f"{self.section}{f'[{tag}]' if tag else ''}.{self.key}{'[]' if self.in_list else ''}"


def _upper(metadata: list[Any]) -> float | None:
    for c in metadata:
        if isinstance(c, annotated_types.Le):
            return float(c.le)  # type: ignore[arg-type]
        if isinstance(c, annotated_types.Lt):
            return float(c.lt)  # type: ignore[arg-type]
    return None


def _numeric(ann: Any, meta: list[Any], in_list: bool) -> Iterator[tuple[type, bool, list[Any]]]:
    """(int/float, inside a list?, constraints) for each numeric type in an annotation."""
    origin = typing.get_origin(ann)
    if origin is typing.Annotated:
        inner, *extra = typing.get_args(ann)
        found = [m for e in extra for m in (e.metadata if isinstance(e, FieldInfo) else [e])]
        yield from _numeric(inner, meta + found, in_list)
    elif origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(ann):
            yield from _numeric(arg, meta, in_list)
    elif origin is list:
        yield from _numeric(typing.get_args(ann)[0], [], True)  # field-level bounds: the list's
    elif ann in (int, float):
        yield ann, in_list, meta


def leaves() -> list[Leaf]:
    out = []
    for section, variants in VARIANTS.items():
        for model, base in variants:
            for key, f in model.model_fields.items():
                for kind, in_list, meta in _numeric(f.annotation, list(f.metadata), False):
                    out.append(Leaf(section, tuple(base.items()), key, kind, in_list,
                                    _upper(meta)))
    return out


LEAVES = leaves()


def test_the_walk_finds_the_options_the_audit_named() -> None:
    names = {leaf.name for leaf in LEAVES}
    assert {"train.lr", "train.local_epochs", "study.rounds", "model[mlp].hidden[]",
            "strategy[fedadam].server_lr", "privacy.clip", "run.round_timeout",
            "data[synthetic].rows_per_site", "data[image_folder].window[]"} <= names
    assert len(LEAVES) > 40


@pytest.mark.parametrize("leaf", LEAVES, ids=lambda leaf: leaf.name)
def test_every_numeric_option_has_an_upper_bound(leaf: Leaf) -> None:
    assert leaf.high is not None, f"{leaf.name} has no upper bound (le= or lt=)"


def _doc(leaf: Leaf, value: Any) -> dict[str, Any]:
    section = dict(leaf.base)
    value = [value, 1.0] if leaf.key == "window" else ([value] if leaf.in_list else value)
    section[leaf.key] = value
    doc: dict[str, Any] = {"data": {"source": "builtin"}}
    doc[leaf.section] = section
    return doc


def _bad_values(leaf: Leaf) -> list[Any]:
    high = leaf.high if leaf.high is not None else 1e300
    values: list[Any] = [10**400, -(10**400), math.inf, -math.inf, math.nan]
    values.append(int(high) + 1 if leaf.kind is int else high * 2 + 1)
    return values


@pytest.mark.parametrize("leaf", LEAVES, ids=lambda leaf: leaf.name)
def test_every_numeric_option_refuses_huge_and_non_finite_values_naming_the_key(
        leaf: Leaf) -> None:
    for value in _bad_values(leaf):
        with pytest.raises(ConfigError) as caught:
            C.parse_config(_doc(leaf, value))
        assert f"'{leaf.section}.{leaf.key}" in str(caught.value), (value, str(caught.value))


def test_a_bound_error_names_the_key_and_the_valid_range() -> None:
    with pytest.raises(ConfigError) as caught:
        C.parse_config({"data": {"source": "builtin"}, "train": {"local_epochs": 10**9}})
    assert "'train.local_epochs'" in str(caught.value) and "valid range 0..10000" in str(
        caught.value)
    with pytest.raises(ConfigError, match=r"'train.lr': .*finite.*valid range \(0, 1000.0\]"):
        C.parse_config({"data": {"source": "builtin"}, "train": {"lr": math.inf}})


def test_the_train_bounds_of_the_config_are_the_wire_bounds() -> None:
    # a study the hub accepts is one every site's task decoder accepts, and no more
    for key in ("local_epochs", "local_steps", "batch_size", "lr", "weight_decay"):
        high = _upper(list(C.TrainSection.model_fields[key].metadata))
        assert high is not None
        value = int(high) if key in ("local_epochs", "local_steps", "batch_size") else high
        TrainConfig.from_json({key: value})  # the largest valid value passes both
        C.parse_config({"data": {"source": "builtin"}, "train": {key: value}})


# -- the audit's repros ----------------------------------------------------------------------
@pytest.mark.parametrize("line, key", [("lr = inf", "train.lr"),
                                       ("local_epochs = 1000000000", "train.local_epochs")])
def test_simulate_exits_2_with_the_key_for_an_unbounded_train_option(
        tmp_path: Path, line: str, key: str) -> None:
    study = tmp_path / "s.toml"
    study.write_text(f'[data]\nsource = "builtin"\n[train]\n{line}\n')
    res = CliRunner().invoke(cli, ["simulate", str(study), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2, res.output
    assert key in res.output
    assert not (tmp_path / "o").exists()


def test_the_hub_answers_422_to_a_study_with_lr_1e999(tmp_path: Path) -> None:
    from fedcare.hub.api import PeerTrust, create_app
    from fedcare.hub.provisioning import create_federation
    from fedcare.hub.service import HubService, NeverRevoked

    fed = create_federation(tmp_path / "fed", hub_host="127.0.0.1", sites=["alpha"],
                            site_kits=tmp_path / "kits")
    service = HubService(tmp_path / "data", revocation=NeverRevoked())
    service.hello("alpha", "1", "0.1.0", [{"name": "breast", "rows": 100}], "s" * 8)
    body = ('{"study": {"name": "x"}, "data": {"source": "federation", "dataset": "breast", '
            '"label": "y", "features": ["a"]}, "train": {"lr": 1e999}}')

    from tests.tokens import user_token

    token = user_token(service)

    async def post() -> httpx.Response:
        transport = httpx.ASGITransport(app=create_app(service, PeerTrust(fed.hub.dir)))
        async with httpx.AsyncClient(transport=transport, base_url="http://hub") as client:
            return await client.post("/v1/studies", content=body,
                                     headers={"Authorization": f"Bearer {token}",
                                              "Content-Type": "application/json"})

    import asyncio

    try:
        r = asyncio.run(post())
    finally:
        service.stop()
        service.db.dispose()
    assert r.status_code == 422, r.text
    assert "train.lr" in r.json()["detail"] and "finite" in r.json()["detail"]
    assert service.list_studies() == []
