"""The vocabulary of fedcare's differential privacy: which mechanism, which accountant, and one
frozen, validated description of a study's DP settings (:class:`PrivacySpec`).

The study configuration (``fedcare.config``) maps its ``[privacy]`` section onto a
:class:`PrivacySpec` once the noise multiplier is known (given, or derived from a budget), so
everything in this package takes typed settings, never a dict.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

from fedcare.core.errors import ConfigError


class Mechanism(enum.StrEnum):
    """How a task protects the data it touches.

    * ``dp_sgd`` - record-level DP-SGD at the site (Abadi et al. 2016): per-example gradient
      clipping and Gaussian noise on every local step, rows Poisson-sampled by the site.
    * ``dp_fedavg_central`` - site-level DP-FedAvg (McMahan et al. 2018): sites clip their
      update, the hub adds the noise to the sum. Protects the *released model*; the hub itself
      must be trusted with the sum (and, without secure aggregation, with each update).
    * ``dp_fedavg_distributed`` - each site adds its share of the noise, so the sum carries the
      full noise. Meant to run under secure aggregation.
    * ``none`` - no DP (recorded by the ledger, refused where the site requires DP).
    """

    DP_SGD = "dp_sgd"
    DP_FEDAVG_CENTRAL = "dp_fedavg_central"
    DP_FEDAVG_DISTRIBUTED = "dp_fedavg_distributed"
    NONE = "none"

    @property
    def is_dp_fedavg(self) -> bool:
        return self in (Mechanism.DP_FEDAVG_CENTRAL, Mechanism.DP_FEDAVG_DISTRIBUTED)

    @property
    def unit(self) -> str:
        """What one unit of privacy is: a record (DP-SGD) or a whole site (DP-FedAvg)."""
        if self is Mechanism.DP_SGD:
            return "record"
        return "site" if self.is_dp_fedavg else "none"


class Accountant(enum.StrEnum):
    """Google ``dp-accounting`` accountants. PLD is tight; RDP is a looser, faster bound."""

    PLD = "pld"
    RDP = "rdp"


def parse_enum(kind: type[enum.StrEnum], value: object, key: str) -> enum.StrEnum:
    """``kind(value)`` or a :class:`ConfigError` naming ``key`` and the valid values."""
    try:
        return kind(value)  # type: ignore[arg-type]
    except ValueError:
        valid = ", ".join(m.value for m in kind)
        raise ConfigError(f"{key} must be one of {valid}, got {value!r}") from None


def check_finite_number(value: object, key: str, *, positive: bool = False,
                        non_negative: bool = False) -> list[str]:
    """Problems with a numeric setting (bool, NaN, inf and wrong sign refused), by key."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return [f"{key} must be a number, got {value!r}"]
    if not math.isfinite(value):
        return [f"{key} must be finite, got {value!r}"]
    if positive and not value > 0:
        return [f"{key} must be > 0, got {value!r}"]
    if non_negative and value < 0:
        return [f"{key} must be >= 0, got {value!r}"]
    return []


@dataclass(frozen=True)
class PrivacySpec:
    """A study's resolved DP settings (noise multiplier known).

    ``clip`` is DP-SGD's per-example gradient norm bound or DP-FedAvg's per-site update norm
    bound; the Gaussian noise's standard deviation is ``noise_multiplier * clip`` (on the sum).
    """

    mechanism: Mechanism
    clip: float
    noise_multiplier: float
    delta: float = 1e-5
    accountant: Accountant = Accountant.PLD

    def __post_init__(self) -> None:
        object.__setattr__(self, "mechanism",
                           parse_enum(Mechanism, self.mechanism, "privacy.mode"))
        object.__setattr__(self, "accountant",
                           parse_enum(Accountant, self.accountant, "privacy.accountant"))
        problems = check_finite_number(self.clip, "privacy.clip", positive=True)
        problems += check_finite_number(self.noise_multiplier, "privacy.noise_multiplier",
                                        non_negative=True)
        problems += check_finite_number(self.delta, "privacy.delta", positive=True)
        if not problems and not self.delta < 1:
            problems.append(f"privacy.delta must be < 1, got {self.delta!r}")
        if self.mechanism is Mechanism.NONE:
            problems.append("privacy.mode 'none' has no DP settings; use no PrivacySpec")
        if problems:
            raise ConfigError(problems)
