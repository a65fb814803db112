"""Which failures are the hub's storage failing (disk full, read-only, I/O error), not a bug.

A study that hits one is *paused*, not failed: nothing about the study is wrong, its last
checkpoint is intact, and it can continue once an operator frees space (``fedcare study
resume``). Everything else that escapes a study is a real failure. The test is on the error
itself (errno, SQLite result code, PostgreSQL SQLSTATE) along its ``raise ... from`` chain,
never on where it was raised: the blob store, the database and the outputs all share the disk.
"""

from __future__ import annotations

import errno
import re

#: OSError errnos that mean "the storage cannot take this write now".
_ERRNOS: dict[int, str] = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "the file system is read-only",
    errno.EIO: "input/output error",
}
#: SQLite primary result codes (the low byte of the extended code).
_SQLITE: dict[int, str] = {
    13: "the database or its disk is full",      # SQLITE_FULL
    8: "the database is read-only",              # SQLITE_READONLY
    10: "disk I/O error in the database",        # SQLITE_IOERR
}
#: PostgreSQL SQLSTATEs (class 53: insufficient resources; 58030 io_error; 25006 read-only).
_PG: dict[str, str] = {
    "53100": "the database server's disk is full",
    "53200": "the database server is out of memory",
    "58030": "I/O error at the database server",
    "25006": "the database is read-only",
}
#: The same failures as text, for errors recorded before this module existed (a study that
#: an older hub marked ``failed: internal error: OSError(28, 'No space left on device')``).
_TEXT = re.compile(
    r"No space left on device|Disk quota exceeded|Read-only file system|Input/output error|"
    r"OSError\((?:28|122|30|5),|\[Errno (?:28|122|30|5)\]|database or disk is full|"
    r"attempt to write a readonly database|disk I/O error", re.IGNORECASE)


def storage_problem(exc: BaseException) -> str | None:
    """What is wrong with the storage when ``exc`` (or an error it was raised from) is a
    storage failure, e.g. ``"no space left on the device ([Errno 28] ...)"``; else None."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        err = todo.pop()
        if err is None or id(err) in seen:
            continue
        seen.add(id(err))
        found = _classify(err)
        if found is not None:
            return f"{found} ({_short(err)})"
        todo += [err.__cause__, err.__context__, getattr(err, "orig", None)]
    return None


def is_storage_failure_text(message: str | None) -> bool:
    """Whether a recorded failure message reports a storage failure (see :data:`_TEXT`)."""
    return bool(message) and _TEXT.search(message or "") is not None


def _classify(err: BaseException) -> str | None:
    if isinstance(err, OSError) and err.errno in _ERRNOS:
        return _ERRNOS[err.errno]
    code = getattr(err, "sqlite_errorcode", None)
    if isinstance(code, int) and (code & 0xFF) in _SQLITE:
        return _SQLITE[code & 0xFF]
    state = getattr(err, "sqlstate", None) or getattr(err, "pgcode", None)
    if isinstance(state, str) and state in _PG:
        return _PG[state]
    if type(err).__module__.startswith(("sqlite3", "_sqlite3")) and _TEXT.search(str(err)):
        return "the database cannot be written"  # an sqlite3 error without its result code
    return None


def _short(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return (text[0] if text else type(err).__name__)[:300]
