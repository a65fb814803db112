"""The hub's persistence layer: a SQL database for state, content-addressed files for blobs.

* :class:`Database` — SQLite file by default (``Database.for_data_dir``), PostgreSQL by URL;
  the schema comes from the Alembic migrations (:meth:`Database.migrate` / :func:`upgrade`).
* :class:`BlobStore` — models, strategy state, task payloads and updates, by sha256.
* One small repository per concern, each taking the :class:`~sqlalchemy.orm.Session` of one
  transaction: :class:`SiteRepo`, :class:`StudyRepo`, :class:`TaskRepo`, :class:`ReplyRepo`,
  :class:`EventRepo`.

Typical use::

    db = Database.for_data_dir(data_dir)
    db.migrate()
    with db.session() as s:          # one transaction
        task = TaskRepo(s).next_pending_for("hospital-a")
"""

from fedcare.hub.store.blobs import BlobStore
from fedcare.hub.store.database import Database, upgrade
from fedcare.hub.store.decisions import DecisionRepo
from fedcare.hub.store.errors import (
    BlobCorrupted,
    BlobNotFound,
    DuplicateReply,
    InvalidBlobId,
    InvalidTransition,
    LateReply,
    NotDelivered,
    RoundConflict,
    StoreError,
    StudyNotFound,
    UnknownTask,
    WrongSite,
)
from fedcare.hub.store.events import EventRepo
from fedcare.hub.store.models import (
    Event,
    Reply,
    Round,
    RoundStatus,
    Site,
    SiteDecision,
    Study,
    StudyStatus,
    Task,
    TaskStatus,
)
from fedcare.hub.store.replies import ReplyRepo
from fedcare.hub.store.sites import DatasetInfo, SiteRepo
from fedcare.hub.store.studies import StudyRepo
from fedcare.hub.store.tasks import NewTask, TaskRepo, task_id

__all__ = [
    "BlobCorrupted",
    "BlobNotFound",
    "BlobStore",
    "Database",
    "DatasetInfo",
    "DecisionRepo",
    "DuplicateReply",
    "Event",
    "EventRepo",
    "InvalidBlobId",
    "InvalidTransition",
    "LateReply",
    "NewTask",
    "NotDelivered",
    "Reply",
    "ReplyRepo",
    "Round",
    "RoundConflict",
    "RoundStatus",
    "Site",
    "SiteDecision",
    "SiteRepo",
    "StoreError",
    "Study",
    "StudyNotFound",
    "StudyRepo",
    "StudyStatus",
    "Task",
    "TaskRepo",
    "TaskStatus",
    "UnknownTask",
    "WrongSite",
    "task_id",
    "upgrade",
]
