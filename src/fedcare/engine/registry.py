"""Model registry entries and model cards: what a released global model is, where it came
from and what it may be used for.

Every finished study (a simulation with ``--out`` or a hub study) releases one
:class:`RegistryEntry`, built from the study's history (which holds its config) and the digests
of its model files. An entry is frozen and *content addressed*: its ``id`` is derived from the
SHA-256 of everything else in it (:func:`entry_id`), so an entry that was changed after its
release no longer matches its id (:meth:`RegistryEntry.verify`), and two releases of the same
study (e.g. after a resume) are two entries, never one overwritten. The card
(:func:`card_markdown`, :func:`card_html`) follows the spirit of Mitchell et al., "Model Cards
for Model Reporting" (FAT* 2019): intended use, data, performance next to baselines, privacy,
limitations and lineage.
"""

from __future__ import annotations

import hashlib
import html
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from fedcare.core.errors import FedcareError
from fedcare.core.files import atomic_write

SCHEMA_VERSION = 1
#: The file a release writes beside the study's outputs.
ENTRY_FILE = "registry.json"
#: Sites with fewer training rows than this are named in the card's limitations.
FEW_ROWS = 100
INTENDED_USE_PLACEHOLDER = (
    "Not stated. The study owner must write the intended use (population, setting, decision "
    "supported, who may use it) before this model is used for anything but research.")

Metrics = dict[str, float]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class SiteRecord(_Frozen):
    """One participating site: its data (counts and digests, never content), its privacy
    spent and how the released model does on its test rows."""

    name: str
    train_rows: int | None = None
    test_rows: int | None = None
    dataset_digest: str | None = None
    contract_hash: str | None = None
    #: Share of positive labels in the site's test rows (binary tasks).
    prevalence: float | None = None
    #: Epsilon spent for this site (None: no differential privacy; "inf": no noise).
    epsilon: float | str | None = None
    delta: float | None = None
    metrics: Metrics = {}
    local_only: Metrics | None = None
    #: Why rounds flagged this site's updates (outlier, capped example count), if ever.
    flagged: tuple[str, ...] = ()


class PrivacyRecord(_Frozen):
    mode: str = "none"
    mechanism: str | None = None
    unit: str | None = None
    delta: float | None = None
    accountant: str | None = None
    #: The largest epsilon over the sites ("inf": a round without noise).
    epsilon: float | str | None = None


class RegistryEntry(_Frozen):
    """A released global model (see the module docstring)."""

    schema_version: int = SCHEMA_VERSION
    id: str
    study: str
    description: str | None = None
    study_id: str | None = None
    mode: str
    study_hash: str
    dataset: str | None = None
    contract_hash: str | None = None
    task: str
    primary_metric: str
    higher_is_better: bool
    strategy: str
    model: str
    rounds: int
    rounds_planned: int
    secure_aggregation: str = "none"
    privacy: PrivacyRecord
    sites: tuple[SiteRecord, ...]
    global_metrics: Metrics
    local_only: Metrics | None = None
    pooled: Metrics | None = None
    limitations: tuple[str, ...] = ()
    #: File name -> SHA-256 of the model file(s) released.
    model_files: dict[str, str]
    created: str
    fedcare_version: str

    def verify(self) -> None:
        """Refuse an entry whose content no longer matches its id."""
        want = entry_id(self.model_dump(mode="json"))
        if want != self.id:
            raise FedcareError(f"registry entry {self.id}: its content does not match its id "
                               f"(content hash {want}): it was changed after its release")

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=True)


class RegistryError(FedcareError):
    """A registry entry cannot be built, read or stored."""


def entry_id(doc: Mapping[str, Any]) -> str:
    """The id of an entry: the first 20 hex digits of the SHA-256 of its canonical JSON
    without the id."""
    body = {k: v for k, v in doc.items() if k != "id"}
    canon = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(canon.encode()).hexdigest()[:20]


def file_digests(folder: Path, names: tuple[str, ...] = ("model.safetensors",
                                                          "model.xgb.json")) -> dict[str, str]:
    """SHA-256 of the model files present in ``folder``."""
    return {n: hashlib.sha256((folder / n).read_bytes()).hexdigest()
            for n in names if (folder / n).is_file()}


def dataset_digest(*arrays: Any) -> str:
    """SHA-256 over a site's arrays (dtype, shape and bytes of each, in order): which rows a
    simulated site trained and was tested on, without the rows."""
    import numpy as np

    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _metrics(block: Any) -> Metrics:
    if not isinstance(block, Mapping):
        return {}
    return {k: float(v) for k, v in block.items()
            if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)}


def _block(history: Mapping[str, Any], *keys: str) -> Any:
    node: Any = history
    for k in keys:
        node = node.get(k) if isinstance(node, Mapping) else None
    return node


def build_entry(history: Mapping[str, Any], model_files: Mapping[str, str], *,
                site_facts: Mapping[str, Mapping[str, Any]] | None = None,
                created: str | None = None) -> RegistryEntry:
    """The registry entry of a finished study from its history (``History.to_dict()``, which
    holds the study's config) and its model files' digests.

    ``site_facts``: what else is known per site (``train_rows``, ``test_rows``,
    ``dataset_digest``, ``contract_hash``): a hub passes the sites' hellos, a simulation its
    site data; the history's ``sites`` list fills in what is missing.
    """
    import datetime as dt

    cfg = history.get("config")
    if not isinstance(cfg, Mapping) or "study" not in cfg:
        raise RegistryError("the history holds no study config: not a finished study's history")
    if not model_files:
        raise RegistryError("a release needs at least one model file")
    data = cfg.get("data") or {}
    facts: dict[str, dict[str, Any]] = {}
    for s in history.get("sites") or []:
        if isinstance(s, Mapping) and "name" in s:
            facts[str(s["name"])] = {"train_rows": s.get("train_rows"),
                                     "test_rows": s.get("test_rows")}
    for name, more in (site_facts or {}).items():
        facts.setdefault(name, {}).update({k: v for k, v in more.items() if v is not None})
    final_sites = _block(history, "final", "site_metrics") or {}
    local_sites = _block(history, "baselines", "local", "site_metrics") or {}
    names = sorted(set(facts) | set(final_sites))
    privacy = history.get("privacy") if isinstance(history.get("privacy"), Mapping) else None
    p_sites = (privacy or {}).get("sites") or {}
    flagged: dict[str, list[str]] = {}
    for r in history.get("rounds") or []:
        for site, why in (r.get("sites_flagged") or {}).items():
            note = f"round {r.get('round')}: {why}"
            if note not in flagged.setdefault(site, []):
                flagged[site].append(note)
    sites = []
    for name in names:
        f = facts.get(name, {})
        m = _metrics(final_sites.get(name))
        eps: Any = None
        if privacy is not None:
            eps = (p_sites.get(name) or {}).get("epsilon", privacy.get("epsilon")) \
                if p_sites else privacy.get("epsilon")
        local = local_sites.get(name)
        sites.append(SiteRecord(
            name=name, train_rows=f.get("train_rows"), test_rows=f.get("test_rows"),
            dataset_digest=f.get("dataset_digest"),
            contract_hash=f.get("contract_hash") or data.get("contract_hash"),
            prevalence=m.get("prevalence"), epsilon=eps,
            delta=None if privacy is None else privacy.get("delta"), metrics=m,
            local_only=None if local is None else _metrics(local),
            flagged=tuple(flagged.get(name, ()))))
    entry = {
        "schema_version": SCHEMA_VERSION, "study": str(cfg["study"].get("name", "")),
        "description": cfg["study"].get("description"),
        "study_id": history.get("study_id"), "mode": str(history.get("mode", "simulation")),
        "study_hash": str(history.get("config_hash", "")), "dataset": data.get("dataset"),
        "contract_hash": data.get("contract_hash"), "task": str(history.get("task", "")),
        "primary_metric": str(history.get("primary_metric", "")),
        "higher_is_better": bool(history.get("higher_is_better", True)),
        "strategy": str(history.get("strategy", "")), "model": str(history.get("model", "")),
        "rounds": len(history.get("rounds") or []),
        "rounds_planned": int(history.get("rounds_planned") or 0),
        "secure_aggregation": str((cfg.get("secure_aggregation") or {}).get("protocol", "none")),
        "privacy": PrivacyRecord(
            mode=str((cfg.get("privacy") or {}).get("mode", "none")),
            **({} if privacy is None else {
                "mechanism": privacy.get("mechanism"), "unit": privacy.get("unit"),
                "delta": privacy.get("delta"), "accountant": privacy.get("accountant"),
                "epsilon": privacy.get("epsilon")})).model_dump(mode="json"),
        "sites": [s.model_dump(mode="json") for s in sites],
        "global_metrics": _metrics(_block(history, "final", "global_metrics")),
        "local_only": (None if _block(history, "baselines", "local") is None
                       else _metrics(_block(history, "baselines", "local", "global_metrics"))),
        "pooled": (None if _block(history, "baselines", "centralized") is None else
                   _metrics(_block(history, "baselines", "centralized", "global_metrics"))),
        "model_files": dict(model_files), "created": created or dt.datetime.now(dt.UTC).isoformat(),
        "fedcare_version": str(history.get("fedcare_version", "")),
    }
    entry["limitations"] = list(_limitations(entry, sites))
    entry["id"] = entry_id(entry)
    return RegistryEntry.model_validate(entry)


def _limitations(entry: Mapping[str, Any], sites: list[SiteRecord]) -> list[str]:
    out = []
    few = [s.name for s in sites if s.train_rows is not None and s.train_rows < FEW_ROWS]
    if few:
        out.append(f"Few training rows (< {FEW_ROWS}) at {', '.join(few)}: their local-only "
                   "scores and per-site test scores are noisy.")
    small_test = [s.name for s in sites if s.test_rows is not None and s.test_rows < 30]
    if small_test:
        out.append(f"Fewer than 30 test rows at {', '.join(small_test)}: per-site metrics there "
                   "carry wide uncertainty.")
    flagged = [s.name for s in sites if s.flagged]
    if flagged:
        out.append(f"Updates flagged as outliers or over-claimed during training at "
                   f"{', '.join(flagged)} (see the per-site table).")
    if entry["privacy"]["mode"] == "dp_sgd":
        out.append("DP-SGD noise is drawn in floating point: the accounting assumes exact "
                   "Gaussian noise (Mironov 2012: floating-point noise can leak in principle).")
    if entry["privacy"]["mode"] == "none":
        out.append("No differential privacy: the model may memorise training records.")
    if entry["rounds"] < entry["rounds_planned"]:
        out.append(f"Only {entry['rounds']} of {entry['rounds_planned']} planned rounds ran.")
    out.append("Evaluated on held-out rows of the participating sites only; performance at "
               "other sites or populations is unknown.")
    return out


def write_entry(entry: RegistryEntry, folder: Path) -> Path:
    path = folder / ENTRY_FILE
    atomic_write(path, entry.to_json().encode())
    return path


def read_entry(path: Path) -> RegistryEntry:
    """An entry from ``registry.json`` (or a run folder holding one), verified against its id."""
    if path.is_dir():
        path = path / ENTRY_FILE
    try:
        entry = RegistryEntry.model_validate_json(path.read_bytes())
    except OSError as exc:
        raise RegistryError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except ValueError as exc:
        raise RegistryError(f"{path} is not a registry entry: {exc}") from exc
    entry.verify()
    return entry


# -- the model card ---------------------------------------------------------------------------
def _fmt(x: Any) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.2g}" if 0 < abs(x) < 1e-3 else f"{x:.3f}"
    return str(x)


def _privacy_text(e: RegistryEntry) -> str:
    p = e.privacy
    if p.mode == "none":
        return ("No differential privacy: the model may memorise training records, and anyone "
                "holding it may be able to tell whether a patient's record was used in training "
                "(membership inference).")
    return (f"Differential privacy ({p.mode}, mechanism {p.mechanism}, protecting one "
            f"{p.unit or 'record'}): epsilon {_fmt(p.epsilon)} at delta {_fmt(p.delta)} "
            f"({p.accountant} accountant), the largest over the sites; per site in the table.")


def _sections(e: RegistryEntry) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, paragraphs, table rows with header first) of each card section."""
    metric = e.primary_metric
    trivial = f"trivial_{metric}"
    data_rows = [["site", "train rows", "test rows", "prevalence", "contract", "dataset digest"]]
    data_rows += [[s.name, _fmt(s.train_rows), _fmt(s.test_rows), _fmt(s.prevalence),
                   (s.contract_hash or "-")[:12], (s.dataset_digest or "-")[:12]]
                  for s in e.sites]
    perf = [["site", f"federated {metric}", f"local-only {metric}", f"trivial {metric}",
             "flagged"]]
    perf += [[s.name, _fmt(s.metrics.get(metric)),
              _fmt(None if s.local_only is None else s.local_only.get(metric)),
              _fmt(s.metrics.get(trivial)), "; ".join(s.flagged) or "-"] for s in e.sites]
    perf.append(["all sites (weighted)", _fmt(e.global_metrics.get(metric)),
                 _fmt(None if e.local_only is None else e.local_only.get(metric)),
                 _fmt(e.global_metrics.get(trivial)), "-"])
    pooled = ("Pooled baseline (all rows in one place): "
              f"{_fmt(e.pooled.get(metric))}." if e.pooled is not None
              else "No pooled baseline was trained.")
    priv_rows = [["site", "epsilon", "delta"]]
    priv_rows += [[s.name, _fmt(s.epsilon) if s.epsilon is not None else "no DP",
                   _fmt(s.delta)] for s in e.sites]
    secure = ("Updates were combined by secure aggregation "
              f"({e.secure_aggregation}): the hub saw only their sum."
              if e.secure_aggregation != "none" else
              "No secure aggregation: the hub saw each site's update.")
    lineage = [["fact", "value"], ["registry id", e.id], ["study", e.study],
               ["study id", e.study_id or "- (simulation)"], ["study content hash", e.study_hash],
               ["data contract hash", e.contract_hash or "-"],
               *[[f"file {n}", d] for n, d in sorted(e.model_files.items())],
               ["created", e.created], ["fedcare version", e.fedcare_version]]
    return [
        ("Intended use", [e.description or INTENDED_USE_PLACEHOLDER], []),
        ("Model", [f"{e.model} trained with {e.strategy} over {e.rounds} round(s) "
                   f"({e.rounds_planned} planned), {e.mode}, task {e.task}."], []),
        ("Data", [f"{len(e.sites)} site(s); dataset {e.dataset or '-'}."], data_rows),
        ("Performance", [f"Primary metric: {metric} "
                         f"({'higher' if e.higher_is_better else 'lower'} is better), on each "
                         "site's held-out rows. Trivial: always predicting the majority class "
                         f"(or the mean). {pooled}"], perf),
        ("Privacy", [_privacy_text(e)], priv_rows if e.privacy.mode != "none" else []),
        ("Secure aggregation", [secure], []),
        ("Limitations", [f"- {x}" for x in e.limitations], []),
        ("Lineage", [], lineage),
    ]


def card_markdown(e: RegistryEntry) -> str:
    out = [f"# Model card: {e.study} ({e.id})", ""]
    for title, paras, rows in _sections(e):
        out += [f"## {title}", ""]
        out += list(paras) + ([""] if paras else [])
        if rows:
            out.append("| " + " | ".join(rows[0]) + " |")
            out.append("|" + "---|" * len(rows[0]))
            out += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |"
                    for r in rows[1:]]
            out.append("")
    return "\n".join(out)


_CSS = ("body{font-family:system-ui,sans-serif;max-width:60em;margin:2em auto;color:#222}"
        "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;"
        "padding:.2em .6em;text-align:left}th{background:#f3f3f3}code{font-size:90%}")


def card_html(e: RegistryEntry) -> str:
    """The card as one self-contained HTML page (inline style, no scripts or links)."""
    esc = html.escape
    out = ["<!doctype html><html><head><meta charset='utf-8'>",
           f"<title>Model card: {esc(e.study)}</title><style>{_CSS}</style></head><body>",
           f"<h1>Model card: {esc(e.study)} <code>{esc(e.id)}</code></h1>"]
    for title, paras, rows in _sections(e):
        out.append(f"<h2>{esc(title)}</h2>")
        if paras and paras[0].startswith("- "):
            out.append("<ul>" + "".join(f"<li>{esc(p[2:])}</li>" for p in paras) + "</ul>")
        else:
            out += [f"<p>{esc(p)}</p>" for p in paras]
        if rows:
            out.append("<table><tr>" + "".join(f"<th>{esc(c)}</th>" for c in rows[0])
                       + "</tr>")
            out += ["<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>"
                    for r in rows[1:]]
            out.append("</table>")
    out.append("</body></html>")
    return "\n".join(out)


def release(folder: Path, history: Mapping[str, Any], *,
            site_facts: Mapping[str, Mapping[str, Any]] | None = None) -> RegistryEntry:
    """Build the entry of the outputs in ``folder`` and write it there (``registry.json``)."""
    entry = build_entry(history, file_digests(folder), site_facts=site_facts)
    write_entry(entry, folder)
    return entry
