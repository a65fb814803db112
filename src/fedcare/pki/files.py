"""Writing federation files so that a crash or a curious co-user never sees a bad state.

Every file is written to a temporary name in its final folder, flushed, fsync'ed and moved
into place with :func:`os.replace` (atomic on POSIX and Windows). Private keys get mode 0600
*at creation* (``os.open(..., O_CREAT | O_EXCL, 0o600)``): a ``chmod`` afterwards would leave a
window in which the key is readable by others. Folders that hold keys are created 0700.

Also here: a deliberately tiny TOML writer (the standard library only reads TOML) for the few
shapes provisioning writes: strings, integers, booleans, lists of those, tables and arrays of
tables.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

# Atomic writes are shared with the rest of fedcare (models, checkpoints, reports).
from fedcare.core.files import (
    PRIVATE_FILE_MODE,
    PUBLIC_FILE_MODE,
    atomic_write,
    fsync_dir,
)

PRIVATE_DIR_MODE = 0o700

__all__ = ["PRIVATE_DIR_MODE", "PRIVATE_FILE_MODE", "PUBLIC_FILE_MODE", "atomic_write",
           "dump_toml", "exclusive_lock", "fsync_dir", "make_private_dir", "toml_string",
           "write_private_key"]



def write_private_key(path: Path, pem: bytes) -> None:
    """Write a private key (mode 0600 from the first byte); never replaces an existing key."""
    if path.exists():
        raise FileExistsError(f"refusing to overwrite private key {path}")
    atomic_write(path, pem, mode=PRIVATE_FILE_MODE)


def make_private_dir(path: Path) -> None:
    """Create a folder readable by its owner only (fails if it exists)."""
    os.mkdir(path, PRIVATE_DIR_MODE)


@contextlib.contextmanager
def exclusive_lock(folder: Path, name: str = ".provision.lock") -> Iterator[None]:
    """Hold an advisory lock on ``folder`` so two operators never interleave two changes."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: single-operator use is assumed there
        yield
        return
    fd = os.open(folder / name, os.O_CREAT | os.O_RDWR, PRIVATE_FILE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


# --- a tiny TOML writer --------------------------------------------------------------------

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f",
            "\r": "\\r"}


def toml_string(text: str) -> str:
    """A TOML basic string for any text (control characters and DEL escaped)."""
    out = []
    for ch in text:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else toml_string(key)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, Sequence):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def _is_table_array(value: Any) -> bool:
    return (isinstance(value, Sequence) and not isinstance(value, str) and len(value) > 0
            and all(isinstance(v, Mapping) for v in value))


def _emit(lines: list[str], table: Mapping[str, Any], prefix: tuple[str, ...]) -> None:
    for key, value in table.items():
        if not isinstance(value, Mapping) and not _is_table_array(value):
            lines.append(f"{_key(key)} = {_value(value)}")
    for key, value in table.items():
        path = ".".join(_key(k) for k in (*prefix, key))
        if isinstance(value, Mapping):
            lines += ["", f"[{path}]"]
            _emit(lines, value, (*prefix, key))
        elif _is_table_array(value):
            for item in value:
                lines += ["", f"[[{path}]]"]
                _emit(lines, item, (*prefix, key))


def dump_toml(document: Mapping[str, Any], *, header: str = "") -> str:
    """Serialise ``document`` as TOML, with ``header`` as leading comment lines."""
    lines = [f"# {line}".rstrip() for line in header.splitlines()]
    if lines:
        lines.append("")
    _emit(lines, document, ())
    return "\n".join(lines) + "\n"
