"""A hand-driven site (the audit's ``rogue.py``): a site's kit and raw HTTPS, polling tasks and
posting crafted replies; plus the TLS contexts of the authentication cases (no certificate, a
foreign CA's certificate, the hub's certificate used as a client's)."""

from __future__ import annotations

import hashlib
import json
import ssl
import time
from pathlib import Path
from typing import Any

import httpx

from fedcare.core.messages import ErrorReply, Task, Update, UpdateKind
from fedcare.core.params import Parameters
from fedcare.core.wire import decode_task, encode_error, encode_update
from fedcare.pki.trust import client_ssl_context

OCTET = "application/octet-stream"


def context(ca: Path, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    """A TLS client context trusting ``ca``, presenting ``cert``/``key`` if given."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile=str(ca))
    if cert is not None:
        ctx.load_cert_chain(str(cert), str(key))
    return ctx


class Rogue:
    """Site ``site`` driven by hand, over mutual TLS with its own kit (or ``ctx``)."""

    def __init__(self, url: str, site: str, kit: Path | None = None,
                 ctx: ssl.SSLContext | None = None) -> None:
        self.site = site
        self.http = httpx.Client(base_url=url, timeout=30.0,
                                 verify=ctx if ctx is not None else client_ssl_context(kit))

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Rogue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def hello(self, datasets: list[dict[str, Any]] | None = None,
              **extra: Any) -> httpx.Response:
        body = {"version": "0.1.0", "session": "rogue-session",
                "datasets": datasets if datasets is not None else [{"name": "breast",
                                                                    "rows": 190}], **extra}
        return self.http.post("/v1/node/hello", json=body)

    def poll(self, wait: int = 5) -> httpx.Response:
        return self.http.get("/v1/node/task", params={"wait": wait})

    def next_task(self, timeout: float = 120.0) -> Task:
        """The next task for this site (bounded)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r = self.poll()
            if r.status_code == 200:
                return decode_task(r.content)
        raise TimeoutError(f"no task for {self.site} within {timeout:.0f} s")

    def post(self, task_id: str, body: bytes, *, sha: str | None = "auto",
             content_type: str = OCTET) -> httpx.Response:
        headers = {"Content-Type": content_type}
        if sha == "auto":
            headers["X-Content-SHA256"] = hashlib.sha256(body).hexdigest()
        elif sha is not None:
            headers["X-Content-SHA256"] = sha
        return self.http.post("/v1/node/reply", params={"task_id": task_id}, content=body,
                              headers=headers)

    def update(self, task: Task, params: Parameters | None = None, num_examples: int = 150,
               task_id: str | None = None) -> bytes:
        return encode_update(Update(task_id=task_id or task.task_id, site=self.site,
                                    round=task.round, kind=UpdateKind.FULL,
                                    parameters=params if params is not None
                                    else task.parameters, num_examples=num_examples))

    def refuse(self, task: Task) -> httpx.Response:
        return self.post(task.task_id, encode_error(ErrorReply(
            task.task_id, self.site, task.round, "Refused", "rogue declines")))


def rewrite_header(message: bytes, **changes: Any) -> bytes:
    """``message`` (a framed update) with header fields replaced, e.g. a JSON integer 10**400."""
    from fedcare.core.framing import unframe
    from fedcare.core.wire import MAGIC

    header, body = unframe(message, MAGIC, what="message", max_header=1 << 20)
    header.update(changes)
    hb = json.dumps(header).encode()
    return MAGIC + len(hb).to_bytes(4, "little") + hb + bytes(body)
