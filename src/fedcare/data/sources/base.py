"""What every data source declares: its options (the ``[data]`` section it reads), its
capabilities and how it builds its sites' data."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Self

from pydantic import Field, FiniteFloat, model_validator

from fedcare.core.settings import Section, literal_values

if TYPE_CHECKING:
    from fedcare.core.dataset import SiteData

#: Sites a study may have (simulated or in a federation).
MAX_SITES = 10_000
#: Classes of a classification task.
MAX_CLASSES = 10_000
#: Features of a synthetic dataset, rows generated per synthetic site.
MAX_FEATURES = 100_000
MAX_ROWS_PER_SITE = 10_000_000
#: Dirichlet concentration (large = iid).
MAX_ALPHA = 1e6

StatsRange = tuple[FiniteFloat, FiniteFloat]


@dataclass(frozen=True)
class DataCapabilities:
    """What a source can do, read by the compatibility rules instead of its name.

    ``simulated``: its sites' data is built in this process (``fedcare simulate``); False for
    data held by a federation's nodes (``fedcare study submit``). ``raw_columns``: it reads
    tables whose columns may hold gaps and categories (``data.impute``,
    ``data.categorical``)."""

    simulated: bool = True
    raw_columns: bool = False


class DataOptions(Section):
    """The ``[data]`` keys every source shares; a source's subclass narrows ``source`` to
    its one name (``Literal["name"]``, whose description is the source's summary)."""

    if TYPE_CHECKING:  # each source declares it (a field here would come first in the dump)
        source: str
    capabilities: ClassVar[DataCapabilities] = DataCapabilities()

    test_fraction: float = Field(0.2, ge=0, lt=1, allow_inf_nan=False,
                                 description="Share of each site's rows held out for testing.")
    standardize: bool = Field(True, description=(
        "Scale tabular features by the federation's mean/std (computed from per-site sums, "
        "no rows pooled)."))
    stats_clip: StatsRange | dict[str, StatsRange] | None = Field(None, description=(
        "DP studies that standardize: each feature's range [low, high] (one pair for every "
        "feature, or a table feature = [low, high]); values are clipped to it for the feature "
        "statistics only, which bounds what one row adds, so the sums can be noised."))

    impute: Literal["none", "mean"] = Field("none", description=(
        "Missing numeric feature values: none (a missing value is an error) or mean (filled "
        "with the federation-wide mean of the observed values, computed with the "
        "standardization statistics from each site's sums and counts of observed values, no "
        "rows pooled; under DP clipped to data.stats_clip and noised). With mean, rows "
        "without a label are dropped and counted by reason."))
    categorical: list[str] = Field(default_factory=list, max_length=1_000, description=(
        "Feature columns holding categories, one-hot encoded with one federation-wide level "
        "list: each site reports the levels it holds in at least 10 training rows (rarer "
        "ones are suppressed), the list is their sorted union; a missing or unlisted value "
        "encodes as all zeros. Not in DP studies (the level names are released without "
        "noise)."))
    max_levels: int = Field(20, ge=2, le=1_000, description=(
        "Most levels a categorical column may have (the one-hot width per column, so the "
        "model's shape is known before any site is asked); a site refuses a column with more "
        "distinct values."))

    @model_validator(mode="after")
    def _stats_clip_ranges(self) -> Self:
        clip = self.stats_clip
        ranges = clip.items() if isinstance(clip, dict) else [("", clip)] if clip else []
        bad = [name or "every feature" for name, (lo, hi) in ranges if not lo < hi]
        if bad:
            raise ValueError(f"stats_clip: low must be below high ({', '.join(bad)})")
        return self

    # -- what each source may override --------------------------------------------------
    @classmethod
    def source_name(cls) -> str:
        """The source's name (``data.source``)."""
        return str(literal_values(cls.model_fields["source"].annotation)[0])

    @classmethod
    def source_summary(cls) -> str:
        """What the source is, in a sentence (the description of its ``source`` key)."""
        return cls.model_fields["source"].description or ""

    def build(self, seed: int) -> list[SiteData]:
        """Every site's data for a simulation (validated: a missing file, an absent label or
        an empty site is a :class:`~fedcare.core.errors.DataError` that names the site)."""
        raise NotImplementedError

    def problems(self) -> list[str]:
        """Rules between this section's own keys that a field cannot state (messages as
        :func:`fedcare.config.parse_config` reports them: ``'data.key': why``)."""
        return []

    def resolved(self, base: Path) -> Self:
        """The section with its relative file paths resolved against ``base`` (the study
        file's folder)."""
        return self

    def declared_sites(self) -> int | None:
        """How many sites the section itself names (None: known only once the study runs)."""
        return None

    def declared_task(self) -> str | None:
        """The task when the section alone fixes it (others infer it from the labels)."""
        return None

    def declared_features(self) -> list[str] | None:
        """The feature columns the section fixes before any data is read (None: read from
        the data)."""
        return None

    def hashed(self, doc: dict[str, Any]) -> dict[str, Any]:
        """The section as the study's content hash reads it (``doc``: its JSON dump): keys
        added after studies were approved are dropped while at their default, so the hash,
        and what every site approved, is unchanged."""
        return doc

    def test_split(self) -> str:
        """How a site without its own test file chooses its test rows, in words."""
        return f"random {self.test_fraction * 100:g} % split"
