"""The site's own configuration: which local file each dataset name means, which studies
the site approves. It never leaves the site; the hub only learns names and row counts.

```toml
[datasets.breast]
path = "data/breast.csv"      # relative to this file; .csv, .csv.gz or .parquet
test_path = "data/breast-2024.csv"  # optional fixed test set (temporal / external
                               # validation): trains on all of path, tests on this file

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

[baselines]
local = true                   # when an approved study asks ([baselines] local_at_sites),
                               # train its model alone on this site's rows and report the
                               # held-out metrics; false refuses (the study goes on without)

[sandbox]
allow_weaker = false           # a node that is not root runs a study's own code (model
                               # "custom") in the weaker sandbox only if true; else refuses it

[policy]
file = "site_policy.toml"      # the site's own policy (fedcare.governance.site_policy):
                               # which studies it joins, what may leave; `fedcare node policy
                               # init` writes the strict default
```

Without ``[policy]`` (a site.toml from before site policies) the node refuses every study,
saying how to create one: no policy is never "no rules". Without ``[privacy]`` the site
keeps no budget (and says so when the node starts). Without ``[baselines]`` the site trains
the local-only baseline a study it approved asks for: the request is part of the study's
content hash, so approving the study approved it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from pydantic import Discriminator, Field, Tag, TypeAdapter, field_validator

from fedcare.core.settings import Section, load_toml


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
    #: Table datasets with a fixed test file (``test_path``), by dataset name.
    test_paths: dict[str, Path] = field(default_factory=dict)
    #: Whether the site trains a study's model alone when an approved study asks for it.
    local_baselines: bool = True
    #: Whether a node that is not root runs a study's own code in the weaker sandbox.
    sandbox_allow_weaker: bool = False
    #: The site's policy file ([policy] file; None: the file names none, every study is
    #: refused).
    site_policy: Path | None = None

    def approves(self, config_hash: str) -> bool:
        """Fail closed: a study runs only if its exact content hash is listed (or 'any')."""
        return self.approve_any or config_hash in self.approved


# --- the file's schema: one declaration per kind of dataset ----------------------------------
class _TableDataset(Section):
    path: str = Field(min_length=1, description="A .csv, .csv.gz or .parquet table.")
    test_path: str | None = Field(None, min_length=1, description=(
        "Optional fixed test table (same columns): the site tests on it and trains on all "
        "of path, whatever the study's test_fraction (temporal or external validation)."))


class _ClinicalDataset(Section):
    source: str = Field(min_length=1, description="The site source file (format, paths).")
    contract: str = Field(min_length=1, description="The data contract it is checked against.")


class _ImageDataset(Section):
    images: str = Field(min_length=1, description="Folder of DICOM or NIfTI images.")
    labels: str = Field(min_length=1, description="CSV with columns file,label.")


def _dataset_kind(value: Any) -> str:
    """Which kind of dataset an entry is, from the key that only that kind has."""
    if isinstance(value, dict):
        if "images" in value:
            return "images"
        if "source" in value or "contract" in value:
            return "clinical"
    return "table"


_Dataset = Annotated[
    Annotated[_TableDataset, Tag("table")] | Annotated[_ClinicalDataset, Tag("clinical")]
    | Annotated[_ImageDataset, Tag("images")],
    Discriminator(_dataset_kind),
]


class _Approval(Section):
    studies: Any = Field(default_factory=list, description=(
        "Content hashes of the studies the site approves, or \"any\" (demos only)."))

    @field_validator("studies")
    @classmethod
    def _hashes_or_any(cls, value: Any) -> list[str] | str:
        if value == "any" or (isinstance(value, list) and all(isinstance(v, str)
                                                                for v in value)):
            return value  # type: ignore[no-any-return]
        raise ValueError('must be a list of study content hashes, or "any"')


class _Privacy(Section):
    policy: str = Field(min_length=1, description="The site's privacy budget file.")


class _Policy(Section):
    file: str = Field(min_length=1, description=(
        "The site's policy file (which studies it joins, what may leave), relative to this "
        "file; `fedcare node policy init` writes the strict default."))


class _Baselines(Section):
    local: bool = Field(True, description=(
        "Train the model of an approved study that asks for it ([baselines] local_at_sites) "
        "alone on this site's rows and report its held-out metrics; false refuses."))


class _Sandbox(Section):
    allow_weaker: bool = Field(False, description=(
        "A node that is not root runs a study's own code (model custom) in the sandbox's "
        "weaker mode (user and network namespace and Landlock; no own uid, no private "
        "root) only if true; false refuses such studies."))


class _NodeFile(Section):
    datasets: dict[str, _Dataset] = Field(min_length=1, description=(
        "[datasets.NAME]: path = TABLE, or source + contract, or images + labels."))
    approval: _Approval = Field(default_factory=_Approval)
    privacy: _Privacy | None = None
    baselines: _Baselines = Field(default_factory=_Baselines)
    sandbox: _Sandbox = Field(default_factory=_Sandbox)
    policy: _Policy | None = None


_FILE = TypeAdapter(_NodeFile)


def load_node_data(path: Path) -> NodeData:
    """Read the site's node data file; paths in it are relative to the file."""
    path = Path(path)
    doc: _NodeFile = load_toml(path, _FILE, what="node data config",
                               tags={"table", "clinical", "images"})
    here = path.parent

    def local(p: str) -> Path:
        return (here / p).resolve()

    datasets: dict[str, Path] = {}
    clinical: dict[str, ClinicalSource] = {}
    images: dict[str, ImageFolder] = {}
    test_paths: dict[str, Path] = {}
    for name, entry in doc.datasets.items():
        if isinstance(entry, _ImageDataset):
            images[name] = ImageFolder(local(entry.images), local(entry.labels))
            datasets[name] = images[name].labels
        elif isinstance(entry, _ClinicalDataset):
            clinical[name] = ClinicalSource(local(entry.source), local(entry.contract))
            datasets[name] = clinical[name].source
        else:
            datasets[name] = local(entry.path)
            if entry.test_path is not None:
                test_paths[name] = local(entry.test_path)
    studies = doc.approval.studies
    return NodeData(datasets, studies == "any",
                    frozenset(studies if isinstance(studies, list) else []),
                    clinical=clinical, images=images, test_paths=test_paths,
                    privacy_policy=local(doc.privacy.policy) if doc.privacy else None,
                    local_baselines=doc.baselines.local,
                    sandbox_allow_weaker=doc.sandbox.allow_weaker,
                    site_policy=local(doc.policy.file) if doc.policy else None)
