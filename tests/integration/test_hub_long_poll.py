"""One site opening many long-polls cannot stall the hub (audit F4, expM.py).

A real hub over mutual TLS. Site gamma opens 60 concurrent ``GET /v1/node/task?wait=60`` with
its own certificate. Each long-poll used to hold one of the hub's worker threads, so every
other site's hello and every researcher request waited ~57 s for one to end. Now a waiting
long-poll holds no thread, a site may hold MAX_POLLS_PER_SITE of them, and the rest are
refused at once with 429.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from fedcare.hub.service import MAX_POLLS_PER_SITE
from tests.integration.network import DATASET, NetFederation
from tests.integration.network import net_fixture as net_fixture  # the "net" fixture

Net = Callable[..., NetFederation]
pytestmark = pytest.mark.slow
POLLS = 60
#: Generous on a loaded 2-core machine; it was 57 s, and a hello takes ~0.02 s when idle.
PROMPT = 10.0


def _hello(client: httpx.Client) -> httpx.Response:
    return client.post("/v1/node/hello", json={
        "version": "test", "session": "test", "datasets": [{"name": DATASET, "rows": 100}]})


def test_many_long_polls_of_one_site_do_not_stall_other_sites_or_researchers(net: Net) -> None:
    fed = net(sites=("alpha", "gamma"))
    fed.start_hub()
    with fed.site_client("gamma") as gamma:
        assert _hello(gamma).status_code == 200

    answers: list[Any] = []
    lock = threading.Lock()

    def long_poll() -> None:
        try:
            with fed.site_client("gamma") as c:
                got: Any = c.get("/v1/node/task", params={"wait": 60}, timeout=120)
        except httpx.HTTPError as exc:  # the hub is killed at the end of the test
            got = exc
        with lock:
            answers.append(got)

    pollers = [threading.Thread(target=long_poll, daemon=True) for _ in range(POLLS)]
    for t in pollers:
        t.start()

    def refused() -> list[httpx.Response]:
        with lock:
            got = [a for a in answers if isinstance(a, httpx.Response)
                   and a.status_code == 429]
        return got if len(got) >= POLLS - MAX_POLLS_PER_SITE else []

    too_many = fed.wait_until(f"{POLLS - MAX_POLLS_PER_SITE} long-polls to be refused",
                              refused, 90)
    assert "already holds" in too_many[0].json()["detail"]
    with lock:
        assert len(answers) == POLLS - MAX_POLLS_PER_SITE  # the others are still waiting

    # While gamma holds its long-polls: another site's hello and a researcher's request.
    with fed.site_client("alpha") as alpha:
        start = time.monotonic()
        r = _hello(alpha)
        hello_took = time.monotonic() - start
    assert r.status_code == 200, r.text
    start = time.monotonic()
    r = fed.call("GET", "/v1/studies")
    studies_took = time.monotonic() - start
    assert r.status_code == 200, r.text
    assert hello_took < PROMPT and studies_took < PROMPT, (hello_took, studies_took)
    with lock:  # gamma's own polls were not answered meanwhile
        assert len(answers) == POLLS - MAX_POLLS_PER_SITE

    fed.kill_hub()
    for t in pollers:
        t.join(timeout=30)
