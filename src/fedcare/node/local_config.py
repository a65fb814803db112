"""The site's own configuration: which local file each dataset name means, which studies
the site approves. It never leaves the site; the hub only learns names and row counts.

```toml
[datasets.breast]
path = "data/breast.csv"      # relative to this file; .csv, .csv.gz or .parquet

[datasets.cardio]               # a clinical source turned into a contract's feature table
source = "hospital.toml"       # site source: format (csv | omop | fhir), paths, mappings
contract = "cardio.toml"       # the data contract the site checked its data against

[datasets.xray]                 # DICOM / NIfTI images and a file,label CSV
images = "images/"
labels = "labels.csv"

[approval]
studies = ["3f1c...e9"]        # content hashes of approved studies, or "any" (demos only)

[privacy]
policy = "privacy.toml"        # the site's privacy budget (max_epsilon, delta, require_dp);
                               # the ledger of what was spent is kept in the state folder
```

Without ``[privacy]`` the site keeps no budget (and says so when the node starts).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from fedcare.core.errors import ConfigError


@dataclass(frozen=True)
class ClinicalSource:
    """A dataset built at the site from its own records by a data contract."""

    source: Path
    contract: Path


@dataclass(frozen=True)
class ImageFolder:
    """A dataset of DICOM/NIfTI images in a folder with a ``file,label`` CSV."""

    folder: Path
    labels: Path


@dataclass(frozen=True)
class NodeData:
    datasets: dict[str, Path]
    approve_any: bool
    approved: frozenset[str]
    clinical: dict[str, ClinicalSource] = field(default_factory=dict)
    images: dict[str, ImageFolder] = field(default_factory=dict)
    privacy_policy: Path | None = None

    def approves(self, config_hash: str) -> bool:
        """Fail closed: a study runs only if its exact content hash is listed (or 'any')."""
        return self.approve_any or config_hash in self.approved


def load_node_data(path: Path) -> NodeData:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"node data config {path} does not exist")
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"cannot parse {path.name}: {exc}", source=str(path)) from exc
    problems: list[str] = []
    unknown = set(doc) - {"datasets", "approval", "privacy"}
    if unknown:
        problems.append(f"unknown sections {sorted(unknown)}")
    datasets: dict[str, Path] = {}
    clinical: dict[str, ClinicalSource] = {}
    raw = doc.get("datasets", {})
    if not isinstance(raw, dict) or not raw:
        problems.append("[datasets] must name at least one dataset: [datasets.NAME] path = ...")
        raw = {}
    images: dict[str, ImageFolder] = {}
    for name, entry in raw.items():
        if isinstance(entry, dict) and "images" in entry:
            if not (isinstance(entry.get("images"), str)
                    and isinstance(entry.get("labels"), str)) or set(entry) - {"images",
                                                                               "labels"}:
                problems.append(f"datasets.{name}: an image dataset takes images = FOLDER and "
                                "labels = CSV")
                continue
            images[name] = ImageFolder((path.parent / entry["images"]).resolve(),
                                       (path.parent / entry["labels"]).resolve())
            datasets[name] = images[name].labels
            continue
        if isinstance(entry, dict) and "source" in entry:
            if not (isinstance(entry.get("source"), str)
                    and isinstance(entry.get("contract"), str)):
                problems.append(f"datasets.{name}: source and contract must both be paths")
                continue
            extra = set(entry) - {"source", "contract"}
            if extra:
                problems.append(f"unknown keys in datasets.{name}: {sorted(extra)}")
            clinical[name] = ClinicalSource((path.parent / entry["source"]).resolve(),
                                            (path.parent / entry["contract"]).resolve())
            datasets[name] = clinical[name].source
            continue
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
            problems.append(f"datasets.{name}.path must be a string (or give source and "
                            "contract)")
            continue
        extra = set(entry) - {"path"}
        if extra:
            problems.append(f"unknown keys in datasets.{name}: {sorted(extra)}")
        datasets[name] = (path.parent / entry["path"]).resolve()
    policy = None
    priv = doc.get("privacy")
    if priv is not None:
        if not isinstance(priv, dict) or not isinstance(priv.get("policy"), str) or (
                set(priv) - {"policy"}):
            problems.append("[privacy] takes one key: policy = \"privacy.toml\"")
        else:
            policy = (path.parent / priv["policy"]).resolve()
    approval = doc.get("approval", {})
    studies = approval.get("studies", []) if isinstance(approval, dict) else None
    if studies != "any" and not (isinstance(studies, list)
                                 and all(isinstance(s, str) for s in studies)):
        problems.append("approval.studies must be a list of study hashes or \"any\"")
        studies = []
    if problems:
        raise ConfigError(problems, source=str(path))
    return NodeData(datasets, studies == "any", frozenset(studies if isinstance(studies, list)
                                                          else []), clinical=clinical,
                    images=images, privacy_policy=policy)
