"""The hub service's own errors (the store's are in :mod:`fedcare.hub.store.errors`); the
API maps each to an HTTP status (:data:`fedcare.hub.api._STATUS`)."""

from __future__ import annotations

from fedcare.core.errors import FedcareError, ProtocolError


class NotFound(FedcareError):
    pass


class Forbidden(FedcareError):
    pass


class NotResumable(FedcareError):
    """A resume asked for a study that is not paused (nor failed on a storage failure)."""


class StorageUnavailable(FedcareError):
    """The hub cannot write its state folder or database right now (disk full, read-only)."""


class TooManyPolls(FedcareError):
    """A site already holds :data:`~fedcare.hub.mailbox.MAX_POLLS_PER_SITE` long-polls
    (answered 429)."""


class NotAwaited(ProtocolError):
    """A reply to a task no running engine of this hub waits for (answered 409): its round or
    study is over, or the hub restarted and the study's engine has not asked for the task
    again yet. A node keeps the reply and sends it again when the task is offered again."""
