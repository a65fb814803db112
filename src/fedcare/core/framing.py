"""One framing for every binary file and message fedcare writes:
``MAGIC | u32 little-endian header length | JSON header | body``.

Wire messages, CKKS context files and ciphertext blobs all use it; only the magic, the names in
the error messages and the header size limit differ. The JSON header is parsed without
touching the body, so routing and validation never copy a large payload.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from typing import Any

from fedcare.core.errors import ValidationError

_LEN = struct.Struct("<I")


def frame(magic: bytes, header: Mapping[str, Any], *body: bytes) -> bytes:
    """The framed bytes. Non-finite numbers in the header raise ``ValueError``."""
    hb = json.dumps(dict(header), separators=(",", ":"), allow_nan=False).encode()
    return b"".join((magic, _LEN.pack(len(hb)), hb, *body))


def unframe(data: bytes | bytearray | memoryview, magic: bytes, *, what: str, max_header: int
            ) -> tuple[dict[str, Any], memoryview]:
    """(header, body) of framed ``data``; :class:`ValidationError` names ``what`` it should
    have been (e.g. ``"message"``) when the magic, the length or the JSON is wrong."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ValidationError(f"{what} must be bytes, got {type(data).__name__}")
    view = memoryview(data).cast("B")
    start = len(magic) + _LEN.size
    if len(view) < start or bytes(view[:len(magic)]) != magic:
        raise ValidationError(f"not a fedcare {what} (bad magic or truncated)")
    (hlen,) = _LEN.unpack_from(view, len(magic))
    if hlen > max_header or start + hlen > len(view):
        raise ValidationError(f"{what} header is truncated or too large")
    try:
        header = json.loads(bytes(view[start:start + hlen]))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValidationError(f"{what} header is not valid JSON: {exc}") from exc
    except RecursionError:  # e.g. "[[[[..." nested deeper than the parser's stack
        raise ValidationError(f"{what} header is nested too deeply") from None
    if not isinstance(header, dict):
        raise ValidationError(f"{what} header must be a JSON object")
    return header, view[start + hlen:]
