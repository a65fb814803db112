"""One exception tree for the whole project.

Every error fedcare raises on purpose derives from :class:`FedcareError`, so callers (the CLI,
later the hub API) can turn them into a clear message and a non-zero exit / 4xx reply, while a
bare ``Exception`` still means "a bug". Errors name the site they concern when there is one,
because in a federation "which hospital?" is always the first question.
"""

from __future__ import annotations


class FedcareError(Exception):
    """Root of every deliberate fedcare error."""

    def __init__(self, message: str, *, site: str | None = None) -> None:
        self.site = site
        self.message = message
        super().__init__(f"[site {site}] {message}" if site else message)


class ConfigError(FedcareError):
    """A study or run configuration is invalid (unknown key, wrong type, impossible value)."""

    def __init__(self, problems: list[str] | str, *, source: str | None = None) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        head = f"invalid configuration{f' in {source}' if source else ''}"
        body = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{head}:\n{body}")


class DataError(FedcareError):
    """A site's data cannot be used (missing file, missing label column, zero rows, ...)."""


class ValidationError(FedcareError):
    """A message (task or update) failed validation: wrong names, shapes, dtypes, non-finite."""


class ProtocolError(FedcareError):
    """A party broke the round protocol (unknown task, duplicate or late submission)."""


class TransportError(FedcareError):
    """A message could not be delivered or its reply was lost."""
