"""Differential privacy: DP-SGD and DP-FedAvg mechanisms, accounting, budget-first noise and
the per-site privacy ledger. Accounting is done by Google's ``dp-accounting`` (PLD, RDP)."""

from __future__ import annotations

from fedcare.privacy.dp.accounting import epsilon, epsilon_of, noise_for_budget
from fedcare.privacy.dp.errors import LedgerError, PrivacyBudgetError
from fedcare.privacy.dp.hooks import PrivatizeInfo, central_noise, privatize_update
from fedcare.privacy.dp.ledger import (
    LedgerEntry,
    LedgerHead,
    LedgerKey,
    PrivacyLedger,
    SitePrivacyPolicy,
    Spent,
)
from fedcare.privacy.dp.mechanisms import clip_update, gaussian_noise
from fedcare.privacy.dp.report import (
    PrivacyReport,
    RoundCharge,
    epsilon_history,
    fedavg_charges,
)
from fedcare.privacy.dp.spec import Accountant, Mechanism, PrivacySpec

__all__ = [
    "Accountant", "LedgerEntry", "LedgerError", "LedgerHead", "LedgerKey", "Mechanism",
    "PrivacyBudgetError", "PrivacyLedger", "PrivacyReport", "PrivacySpec", "PrivatizeInfo",
    "RoundCharge", "SitePrivacyPolicy", "Spent", "central_noise", "clip_update", "epsilon",
    "epsilon_history", "epsilon_of", "fedavg_charges", "gaussian_noise", "noise_for_budget",
    "privatize_update",
]
