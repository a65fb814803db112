"""Errors of the hub's persistence layer.

Two families, both under :class:`~fedcare.core.errors.FedcareError`:

* :class:`StoreError` — the hub's own state is missing, corrupt or asked to do something its
  lifecycle forbids (a blob whose bytes no longer match their hash, an unknown study, a round
  completed twice). These are the hub's problems.
* :class:`~fedcare.core.errors.ProtocolError` subclasses — a *site* broke the round protocol
  (answered a task that does not exist, is not its own, was already answered or came too late).
  The hub API turns these into a 4xx reply and an entry in the events log; they name the site.
"""

from __future__ import annotations

from fedcare.core.errors import FedcareError, ProtocolError, ValidationError


class StoreError(FedcareError):
    """The hub's persisted state cannot serve the request."""


class BlobNotFound(StoreError):
    """No blob with this hash is stored."""


class BlobCorrupted(StoreError):
    """A stored blob's bytes no longer hash to its name (disk damage or tampering)."""


class InvalidBlobId(ValidationError):
    """A blob id is not a lower-case sha256 hex digest (and is never turned into a path)."""


class StudyNotFound(StoreError):
    """No study with this id."""


class InvalidTransition(StoreError):
    """A study status change its lifecycle does not allow (e.g. out of a terminal state)."""


class RoundConflict(StoreError):
    """A round cannot be completed or started: it is not the study's next round."""


class UnknownTask(ProtocolError):
    """A reply names a task the hub never created."""


class WrongSite(ProtocolError):
    """A reply comes from a site the task was not sent to."""


class DuplicateReply(ProtocolError):
    """The task already has a reply: a task is answered at most once."""


class LateReply(ProtocolError):
    """The task expired, or its round is already completed (or failed)."""


class NotDelivered(ProtocolError):
    """A reply to a task that was never handed to the site."""
