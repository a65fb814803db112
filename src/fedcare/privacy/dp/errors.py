"""Errors of the DP package, under fedcare's one exception tree."""

from __future__ import annotations

from fedcare.core.errors import FedcareError


class PrivacyBudgetError(FedcareError):
    """A privacy budget cannot be met or would be exceeded.

    Raised when no noise multiplier reaches a study's target epsilon, and by a site's ledger
    when a task would push the site past its own limit. The message says what was spent, what
    was asked and what to change.
    """


class LedgerError(FedcareError):
    """A site's privacy ledger is unreadable or fails its hash-chain check.

    The ledger fails closed: while this is raised no DP task is charged, so no task runs.
    """
