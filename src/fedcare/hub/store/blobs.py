"""Content-addressed blob store for global models, strategy state and site updates.

A blob is named by the sha256 of its bytes and lives at ``<root>/ab/cdef…`` (the first two hex
digits fan out the directory). The database keeps only the hash, so a row can never point at
bytes other than the ones it was written with: every read re-hashes and raises
:class:`BlobCorrupted` on a mismatch.

Crash safety: bytes go to a temporary file under ``<root>/tmp`` (same file system), are
fsynced, then ``os.replace``d into place and the directory is fsynced. A ``kill -9`` leaves
either no blob or the whole blob — at worst an orphan temporary file or an unreferenced blob,
never a truncated one under a valid name. Blobs are written *before* the transaction that
references them commits, so a committed row always finds its blob.

Blobs hold checkpoints and, with ``--keep-replies``, every site's update: the store's
folders are 0700 and its files 0400, whatever the umask (they were 0755 and 0444).

``durable=False`` skips both fsyncs (sites' replies: see ``HubService.receive_reply``). A
``kill -9`` still leaves the whole blob (the kernel has it); only a power cut can lose or tear
it, and every read re-hashes, so such a blob is found out, never used.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

from fedcare.hub.store.errors import BlobCorrupted, BlobNotFound, InvalidBlobId

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_CHUNK = 1 << 20
#: Owner-only: a blob may be a site's individual update (see the module docstring).
BLOB_DIR_MODE = 0o700
BLOB_FILE_MODE = 0o400


def _private_dir(path: Path) -> None:
    """``mkdir`` then ``chmod``: the mode given to mkdir is cut by the umask."""
    try:
        path.mkdir(mode=BLOB_DIR_MODE)
    except FileExistsError:
        return
    os.chmod(path, BLOB_DIR_MODE)


def check_blob_id(sha: str) -> str:
    """Return ``sha`` if it is a lower-case sha256 hex digest; it names a file, so refuse others."""
    if not isinstance(sha, str) or not _SHA256_HEX.fullmatch(sha):
        raise InvalidBlobId(f"not a sha256 hex digest: {sha!r:.80}")
    return sha


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _VerifyingReader(io.RawIOBase):
    """Reads a blob file and raises :class:`BlobCorrupted` at end of file if the hash differs."""

    def __init__(self, raw: BinaryIO, sha: str) -> None:
        self._raw = raw
        self._sha = sha
        self._hash = hashlib.sha256()
        self._checked = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        n = self._raw.readinto(buffer)  # type: ignore[attr-defined]
        if n:
            self._hash.update(memoryview(buffer)[:n])
        elif not self._checked:
            self._checked = True
            if self._hash.hexdigest() != self._sha:
                raise BlobCorrupted(f"blob {self._sha} is corrupted: its content hash differs")
        return n

    def close(self) -> None:
        if not self.closed:
            self._raw.close()
        super().close()


class BlobStore:
    """Immutable blobs on disk, addressed by their sha256; safe against crashes mid-write."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._tmp = self.root / "tmp"
        self.root.parent.mkdir(parents=True, exist_ok=True)
        _private_dir(self.root)
        if self.root.stat().st_mode & 0o777 != BLOB_DIR_MODE:  # made by an older version
            os.chmod(self.root, BLOB_DIR_MODE)
        _private_dir(self._tmp)

    def path(self, sha: str) -> Path:
        """Where the blob ``sha`` lives (whether or not it exists)."""
        check_blob_id(sha)
        return self.root / sha[:2] / sha[2:]

    def exists(self, sha: str) -> bool:
        return self.path(sha).is_file()

    def put(self, data: bytes) -> str:
        """Store ``data`` and return its sha256 hex. Idempotent: the same bytes give the same
        name, and rewriting them (atomically) also repairs a damaged copy."""
        tmp, sha, _ = self._write_temp([data])
        self._commit(tmp, self.path(sha))
        return sha

    def put_hashed(self, data: bytes, sha: str, *, durable: bool = True) -> str:
        """Store ``data`` whose sha256 the caller computed a moment ago from these very bytes.

        Saves hashing a large upload twice (once to check the sender's checksum, once here);
        the name is still the content's hash, and :meth:`get` still verifies on every read.
        """
        check_blob_id(sha)
        tmp, _, _ = self._write_temp([data], hashed=False, durable=durable)
        self._commit(tmp, self.path(sha), durable=durable)
        return sha

    def put_stream(self, chunks: Iterable[bytes]) -> tuple[str, int]:
        """Store a stream of chunks without holding it in memory; return ``(sha256, size)``."""
        tmp, sha, size = self._write_temp(chunks)
        self._commit(tmp, self.path(sha))
        return sha, size

    def open(self, sha: str) -> BinaryIO:
        """Open a blob for streaming; reading to the end raises :class:`BlobCorrupted` on a
        hash mismatch, so a consumer that reads everything has read verified bytes."""
        try:
            raw = self.path(sha).open("rb", buffering=0)
        except FileNotFoundError:
            raise BlobNotFound(f"no blob {sha}") from None
        return io.BufferedReader(_VerifyingReader(raw, sha), _CHUNK)  # type: ignore[return-value]

    def get(self, sha: str) -> bytes:
        """Return a blob's bytes, verified against its hash."""
        try:
            data = self.path(sha).read_bytes()
        except FileNotFoundError:
            raise BlobNotFound(f"no blob {sha}") from None
        if hashlib.sha256(data).hexdigest() != sha:
            raise BlobCorrupted(f"blob {sha} is corrupted: its content hash differs")
        return data

    def _write_temp(self, chunks: Iterable[bytes], *, hashed: bool = True,
                    durable: bool = True) -> tuple[Path, str, int]:
        digest = hashlib.sha256() if hashed else None
        size = 0
        fd, name = tempfile.mkstemp(dir=self._tmp, suffix=".part")
        tmp = Path(name)
        try:
            with os.fdopen(fd, "wb") as out:
                for chunk in chunks:
                    if digest is not None:
                        digest.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
                out.flush()
                if durable:
                    os.fsync(out.fileno())
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return tmp, digest.hexdigest() if digest is not None else "", size

    def _commit(self, tmp: Path, target: Path, *, durable: bool = True) -> None:
        try:
            _private_dir(target.parent)
            os.chmod(tmp, BLOB_FILE_MODE)
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        if durable:
            _fsync_dir(target.parent)
