"""Find secrets in a folder by their CONTENT (not their names): PEM or DER private keys and
CKKS secret contexts. Used to check that the coordinator's folder and everything it hands
out hold no key but the CA's and the hub's (security audit F13, F10)."""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives import serialization

from fedcare.core.errors import FedcareError
from fedcare.core.framing import unframe
from fedcare.privacy.he.context import CONTEXT_MAGIC


def _is_der_key(data: bytes) -> bool:
    try:
        serialization.load_der_private_key(data, None)
    except (ValueError, TypeError):
        return False
    return True


def _ckks_secret(data: bytes) -> bool:
    at = data.find(CONTEXT_MAGIC)
    while at >= 0:
        try:
            header, _ = unframe(data[at:], CONTEXT_MAGIC, what="HE context", max_header=1 << 16)
            if header.get("kind") != "public":
                return True
        except FedcareError:
            pass
        at = data.find(CONTEXT_MAGIC, at + 1)
    return False


def find_secrets(folder: Path) -> dict[str, str]:
    """``{relative path: what}`` for every file under ``folder`` holding a private key or a
    CKKS secret context."""
    found = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = path.read_bytes()
        rel = path.relative_to(folder).as_posix()
        if b"PRIVATE KEY-----" in data:
            found[rel] = "PEM private key"
        elif _is_der_key(data):
            found[rel] = "DER private key"
        elif _ckks_secret(data):
            found[rel] = "CKKS secret context"
    return found
