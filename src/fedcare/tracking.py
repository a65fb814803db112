"""Optional experiment tracking: a finished run's metrics and model logged to MLflow.

A study opts in with ``[tracking] mlflow_uri = "..."`` (``pip install fedcare[tracking]``
installs ``mlflow-skinny``). One MLflow run per study run, in the experiment
``tracking.experiment`` (default: the study's name), holding:

- parameters: the study's flattened configuration (``strategy.name``, ``train.lr``, ...) and
  its content hash;
- metrics, with the round as MLflow's step: ``global/<metric>`` (the federation's test rows,
  example-weighted) and ``site/<site>/<metric>`` for every evaluated round, ``epsilon`` for
  a DP study; ``final/global/<metric>``, ``final/site/<site>/<metric>`` and the baselines'
  (``local/...``, ``pooled/...``) once;
- artifacts: the run's output folder (``history.json``, the final model, ``report.html``),
  or, without one, the final model and the history written to a temporary folder.

Logged once the run has finished, from its history: a round's model is evaluated with the
next round's tasks, so its metrics are complete only then, and a tracking server that is
down cannot slow or break the training.
"""

from __future__ import annotations

import os
import re
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from fedcare.core.errors import ConfigError, FedcareError

#: MLflow allows these characters in metric and parameter names.
_UNSAFE_KEY = re.compile(r"[^A-Za-z0-9_\-. /]")
#: MLflow's longest parameter value.
_MAX_PARAM = 6000


def _key(*parts: str) -> str:
    return "/".join(_UNSAFE_KEY.sub("_", p) for p in parts)


def _flatten(doc: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, str]]:
    for key, value in doc.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            yield from _flatten(value, name)
        else:
            yield _UNSAFE_KEY.sub("_", name), str(value)[:_MAX_PARAM]


def _metrics(prefix: str, block: Mapping[str, Any] | None) -> dict[str, float]:
    """``<prefix>/global/<metric>`` (example-weighted over the sites' test rows) and
    ``<prefix>/site/<site>/<metric>`` from a result block (``global_metrics`` and
    ``site_metrics``); no prefix for a round's metrics."""
    out: dict[str, float] = {}
    if not block:
        return out
    head = (prefix,) if prefix else ()
    for metric, value in (block.get("global_metrics") or {}).items():
        if isinstance(value, (int, float)):
            out[_key(*head, "global", metric)] = float(value)
    for site, metrics in (block.get("site_metrics") or {}).items():
        for metric, value in (metrics or {}).items():
            if isinstance(value, (int, float)):
                out[_key(*head, "site", site, metric)] = float(value)
    return out


def round_metrics(record: Mapping[str, Any]) -> dict[str, float]:
    """One round's metrics as MLflow logs them (step = the round): the evaluation of the
    model the round produced, and the cumulative epsilon of a DP study."""
    out = _metrics("", record)
    eps = record.get("epsilon")
    if isinstance(eps, (int, float)):
        out["epsilon"] = float(eps)
    return out


def require_mlflow() -> None:
    """Refuse a study that asks for tracking when MLflow is missing - before it trains."""
    import importlib.util

    if importlib.util.find_spec("mlflow") is None:
        raise ConfigError("[tracking] mlflow_uri needs MLflow: pip install "
                          "'fedcare[tracking]' (or mlflow-skinny)")


def log_run(uri: str, experiment: str | None, history: Mapping[str, Any],
            output_dir: Path | None, final_model: bytes | None = None) -> str:
    """Log a finished run to the MLflow tracking server or store at ``uri``; returns the
    MLflow run id. Raises :class:`ConfigError` when MLflow is not installed and
    :class:`FedcareError` when logging fails."""
    require_mlflow()
    import mlflow
    from mlflow.entities import Metric, Param
    if uri.startswith("file:") or "://" not in uri:
        # MLflow 3 keeps its file store in maintenance mode and refuses it unless asked;
        # a study that names one asks for it.
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    study = str(history.get("study", "study"))
    try:
        client = mlflow.MlflowClient(tracking_uri=uri)
        found = client.get_experiment_by_name(experiment or study)
        exp_id = (found.experiment_id if found is not None
                  else client.create_experiment(experiment or study))
        run = client.create_run(exp_id, run_name=study, tags={
            "fedcare.config_hash": str(history.get("config_hash", "")),
            "fedcare.mode": str(history.get("mode", "simulation"))})
        run_id = run.info.run_id
        now = int(time.time() * 1000)
        params = [Param(k, v) for k, v in _flatten(history.get("config") or {})]
        metrics = [Metric(k, v, now, int(r["round"])) for r in history.get("rounds", [])
                   for k, v in round_metrics(r).items()]
        final = {**_metrics("final", history.get("final")),
                 **_metrics("local", (history.get("baselines") or {}).get("local")),
                 **_metrics("pooled", (history.get("baselines") or {}).get("centralized"))}
        metrics += [Metric(k, v, now, 0) for k, v in final.items()]
        for i in range(0, len(params), 100):  # MLflow's batch limits
            client.log_batch(run_id, params=params[i:i + 100])
        for i in range(0, len(metrics), 1000):
            client.log_batch(run_id, metrics=metrics[i:i + 1000])
        _log_artifacts(client, run_id, history, output_dir, final_model)
        client.set_terminated(run_id)
    # MLflow raises many types; the run's results are safe on disk whatever it raised.
    except Exception as exc:
        raise FedcareError(f"MLflow tracking at {uri} failed: {exc}") from exc
    return str(run_id)


def _log_artifacts(client: Any, run_id: str, history: Mapping[str, Any],
                   output_dir: Path | None, final_model: bytes | None) -> None:
    import json

    if output_dir is not None and output_dir.is_dir():
        for path in sorted(output_dir.iterdir()):
            if path.is_file():
                client.log_artifact(run_id, str(path))
        return
    with tempfile.TemporaryDirectory(prefix="fedcare-tracking-") as tmp:
        (Path(tmp) / "history.json").write_text(json.dumps(history, indent=1, default=str))
        if final_model is not None:
            (Path(tmp) / "model.safetensors").write_bytes(final_model)
        client.log_artifacts(run_id, tmp)
