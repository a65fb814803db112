"""Writing files so that a crash never leaves a half-written one.

Every output of fedcare (models, checkpoints, histories, reports, certificates, site state)
goes through :func:`atomic_write`: written under a temporary name in the final folder,
flushed and fsync'ed, then moved into place with :func:`os.replace` (atomic on POSIX and
Windows), and the folder fsync'ed so the rename survives a power cut. The file's mode is set
*at creation*, so a private key is never readable by others, not even for an instant.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path
from typing import Any

PRIVATE_FILE_MODE = 0o600
PUBLIC_FILE_MODE = 0o644


def atomic_write(path: Path, data: bytes, *, mode: int = PUBLIC_FILE_MODE) -> None:
    """Write ``data`` to ``path`` atomically (creating its folder if needed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY | getattr(os, "O_BINARY", 0)
    fd = os.open(tmp, flags, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in ``path`` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # Windows cannot open folders; the rename is still atomic there.
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def read_toml(path: str | Path, what: str) -> dict[str, Any]:
    """Parse a TOML file, or raise :class:`ConfigError` naming ``what`` it was meant to be."""
    import tomllib

    from fedcare.core.errors import ConfigError

    p = Path(path)
    try:
        return tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{what} {p} does not exist", source=str(p)) from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"not valid TOML: {exc}", source=str(p)) from None
