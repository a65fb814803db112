"""What a run folder holds — configuration, final model, history — and the rows it used.

Members are the training rows, non-members the held-out test rows of the same sites (same
distribution, never seen by the model). For a simulation both are rebuilt from the folder's
``config.json`` with :func:`fedcare.sim.sites.build_sites`, whose partition and train/test
split are deterministic under the study seed. For a networked study (``fedcare study
download``) the rows never left the sites: a site audits its own table, split as its node
split it and scaled by the federation-wide normalizer the hub kept in ``history.json``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError

from fedcare.config import FederatedData, StudyConfig, parse_config
from fedcare.core.dataset import SiteData, TaskType
from fedcare.core.errors import ConfigError, DataError, ValidationError
from fedcare.core.params import Parameters
from fedcare.core.wire import load_parameters


@dataclass(frozen=True)
class Candidates:
    """Rows whose membership is tested: ``is_member`` 1 for training rows, 0 for held-out."""

    x: np.ndarray
    y: np.ndarray
    is_member: np.ndarray
    task: TaskType
    name: str
    num_classes: int = 2

    @classmethod
    def of_site(cls, site: SiteData) -> Candidates:
        if len(site.y_test) == 0 or len(site.y_train) == 0:
            raise DataError("an audit needs held-out rows as non-members; this study has "
                            "data.test_fraction = 0 or a site without test rows", site=site.name)
        return cls(np.concatenate([site.x_train, site.x_test]),
                   np.concatenate([site.y_train, site.y_test]),
                   np.r_[np.ones(len(site.y_train)), np.zeros(len(site.y_test))].astype(np.int8),
                   site.task, site.name, site.num_classes)


@dataclass(frozen=True)
class RunFolder:
    path: Path
    config: StudyConfig
    parameters: Parameters
    history: dict[str, Any] | None


def load_run(run_dir: str | Path) -> RunFolder:
    """Read a ``fedcare simulate --out`` folder; ConfigError naming what is missing."""
    path = Path(run_dir)
    if not path.is_dir():
        raise ConfigError(f"run folder {path} does not exist; point --run at a folder written "
                          "by `fedcare simulate --out`")
    if not (path / "model.safetensors").is_file():
        raise ConfigError(f"{path} is not a finished run: it has no model.safetensors "
                          "(written by `fedcare simulate --out` or `fedcare export download`)")
    history = None
    if (path / "history.json").is_file():
        try:
            history = json.loads((path / "history.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{path / 'history.json'} is unreadable: {exc}") from exc
    if (path / "config.json").is_file():
        source = path / "config.json"
        try:
            raw_cfg = json.loads(source.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{source} is unreadable: {exc}") from exc
    elif isinstance(history, dict) and isinstance((history.get("meta") or {}).get("config"),
                                                  dict):
        source, raw_cfg = path / "history.json", history["meta"]["config"]
    else:
        raise ConfigError(f"{path} has no config.json and its history.json records no "
                          "configuration; point --run at a folder written by `fedcare "
                          "simulate --out` or `fedcare export download`")
    cfg = parse_config(raw_cfg, source=str(source))
    try:
        params = load_parameters((path / "model.safetensors").read_bytes()).parameters
    except (OSError, ValidationError, SafetensorError) as exc:  # wire lets SafetensorError out
        raise ConfigError(f"{path / 'model.safetensors'} is unreadable: {exc}") from exc
    return RunFolder(path, cfg, params, history)


def study_privacy(history: Mapping[str, Any] | None, site: str | None = None) -> dict[str, Any]:
    """The study's (epsilon, delta) from ``history.json``, or ``{"private": False}``.

    Looks at ``history["privacy"]``, then ``history["meta"]["privacy"]``, for the JSON of a
    :class:`fedcare.privacy.dp.report.PrivacyReport` (``epsilon`` a number or "inf",
    ``delta``, ``mechanism``), or for per-site reports under ``"sites"`` (DP-SGD: each site's
    epsilon depends on its row count). For all sites together the largest epsilon is reported.
    """
    for holder in (history or {}, (history or {}).get("meta") or {}):
        p = holder.get("privacy") if isinstance(holder, Mapping) else None
        if not isinstance(p, Mapping):
            continue
        sites = p.get("sites")
        reports = {k: v for k, v in sites.items() if isinstance(v, Mapping)
                   and _epsilon(v) is not None} if isinstance(sites, Mapping) else {}
        if site is not None and site in reports:
            return _privacy_entry(reports[site]) | {"site": site}
        if _epsilon(p) is not None:
            return _privacy_entry(p)
        if reports:
            worst = max(reports, key=lambda k: _epsilon(reports[k]) or 0.0)
            return _privacy_entry(reports[worst]) | {"site": worst}
    return {"private": False, "label": "not private"}


def _epsilon(report: Mapping[str, Any]) -> float | None:
    eps = report.get("epsilon")
    if eps == "inf":
        return float("inf")
    if isinstance(eps, (int, float)) and not isinstance(eps, bool):
        return float(eps)
    return None


def _privacy_entry(report: Mapping[str, Any]) -> dict[str, Any]:
    eps = _epsilon(report)
    out: dict[str, Any] = {"private": eps is not None and eps != float("inf"),
                           "epsilon": eps if eps != float("inf") else "inf"}
    for key in ("delta", "mechanism"):
        if isinstance(report.get(key), (int, float, str)):
            out[key] = report[key]
    return out


def candidates_of(cfg: StudyConfig, site: str | None, *,
                  history: Mapping[str, Any] | None = None,
                  site_data: Path | None = None) -> Candidates:
    """Members/non-members of one site (or of every site) rebuilt from the study's config."""
    if isinstance(cfg.data, FederatedData):
        if site is None or site_data is None:
            raise ConfigError("this run used data.source = 'federation': its rows stayed at "
                              "the sites, so only a site can audit it, beside its own data: "
                              "pass --site NAME --site-data PATH_TO_THAT_SITES_TABLE")
        return _networked_site(cfg, cfg.data, history or {}, site, site_data)
    from fedcare.sim.sites import build_sites, pooled

    sites = build_sites(cfg.data, cfg.study.seed)
    if site is None:
        chosen = pooled(sites) if len(sites) > 1 else sites[0]
        data = Candidates.of_site(chosen)
        return Candidates(data.x, data.y, data.is_member, data.task,
                          "all sites" if len(sites) > 1 else sites[0].name, data.num_classes)
    by_name = {s.name: s for s in sites}
    if site not in by_name:
        raise DataError(f"no site named {site!r} in this study; its sites are "
                        f"{sorted(by_name)}")
    return Candidates.of_site(by_name[site])


def _networked_site(cfg: StudyConfig, data: FederatedData, history: Mapping[str, Any],
                    site: str, path: Path) -> Candidates:
    """A networked site's rows split as its node split them: the site's position in the
    study's site list seeds the split (as in the node agent), and the federation-wide
    normalizer the hub recorded in the history scales the features."""
    from fedcare.core.seeds import site_round_seed
    from fedcare.data.partition import split_train_test
    from fedcare.data.tabular import load_table

    names = [s.get("name") for s in history.get("sites", []) if isinstance(s, Mapping)]
    if site not in names:
        raise DataError(f"site {site!r} did not take part in this study; its sites are "
                        f"{names} (history.json)")
    table = load_table(path, label=data.label, features=data.features, site=site)
    task = TaskType(data.task)
    classes = data.classes if task is TaskType.MULTICLASS else 2
    if task is TaskType.REGRESSION:
        y = table.y.astype(np.float32)
    else:
        y = np.asarray(table.y)
        if y.dtype.kind not in "iubf" or not np.all(y == np.round(y)) or (
                (y < 0) | (y >= classes)).any():
            raise DataError(f"label {data.label!r} must hold class ids 0..{classes - 1}",
                            site=site)
        y = y.astype(np.int64)
    x = table.x.astype(np.float32)
    if data.standardize:
        norm = (history.get("meta") or {}).get("normalizer")
        if not isinstance(norm, Mapping) or "mean" not in norm or "std" not in norm:
            raise ConfigError("this study standardized its features but history.json holds "
                              "no normalizer (meta.normalizer); cannot rebuild the model's "
                              "inputs")
        mean = np.asarray(norm["mean"], dtype=np.float32)
        std = np.asarray(norm["std"], dtype=np.float32)
        if mean.shape != x.shape[1:] or std.shape != x.shape[1:]:
            raise DataError(f"the study's normalizer has {mean.size} features, the table "
                            f"{x.shape[1]}", site=site)
        x = ((x - mean) / std).astype(np.float32)
    tr, te = split_train_test(np.arange(len(y)), data.test_fraction,
                              site_round_seed(cfg.study.seed, 0, names.index(site)))
    return Candidates.of_site(SiteData(site, x[tr], y[tr], x[te], y[te], tuple(data.features),
                                       task, classes))
