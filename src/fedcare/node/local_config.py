"""The site's own configuration: which local file each dataset name means, which studies
the site approves. It never leaves the site; the hub only learns names and row counts.

```toml
[datasets.breast]
path = "data/breast.csv"      # relative to this file; .csv, .csv.gz or .parquet

[approval]
studies = ["3f1c...e9"]        # content hashes of approved studies, or "any" (demos only)
```
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

from fedcare.core.errors import ConfigError


@dataclass(frozen=True)
class NodeData:
    datasets: dict[str, Path]
    approve_any: bool
    approved: frozenset[str]

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
    unknown = set(doc) - {"datasets", "approval"}
    if unknown:
        problems.append(f"unknown sections {sorted(unknown)}")
    datasets: dict[str, Path] = {}
    raw = doc.get("datasets", {})
    if not isinstance(raw, dict) or not raw:
        problems.append("[datasets] must name at least one dataset: [datasets.NAME] path = ...")
        raw = {}
    for name, entry in raw.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
            problems.append(f"datasets.{name}.path must be a string")
            continue
        extra = set(entry) - {"path"}
        if extra:
            problems.append(f"unknown keys in datasets.{name}: {sorted(extra)}")
        datasets[name] = (path.parent / entry["path"]).resolve()
    approval = doc.get("approval", {})
    studies = approval.get("studies", []) if isinstance(approval, dict) else None
    if studies != "any" and not (isinstance(studies, list)
                                 and all(isinstance(s, str) for s in studies)):
        problems.append("approval.studies must be a list of study hashes or \"any\"")
        studies = []
    if problems:
        raise ConfigError(problems, source=str(path))
    return NodeData(datasets, studies == "any", frozenset(studies if isinstance(studies, list)
                                                          else []))
