"""The researcher's client of a networked hub, shared by the CLI, the demo and notebooks.

It lives outside :mod:`fedcare.cli` so that every caller - the ``fedcare study`` commands, the
demo, a script, later the dashboard's tests - talks to the hub through the same code, and the
CLI only renders (architecture review P8). It knows the hub's HTTP API, never its internals.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fedcare.core.errors import ConfigError, FedcareError

#: Study states after which nothing more happens without a researcher's action (a paused
#: study waits for `fedcare study resume`).
FINAL_STATES = frozenset({"completed", "failed", "cancelled", "paused"})


#: Environment variable holding the researcher's bearer token (the secret itself), for
#: scripts and CI; a command line never carries it (it would show in `ps` and shell history).
TOKEN_ENV = "FEDCARE_TOKEN"


class HubClient:
    """The researcher's HTTPS client (server verified against the federation CA).

    The researcher's credential is the bearer token in the researcher folder
    (``researcher.token``, written by provisioning). It is taken from, first to last:
    ``token``, the file ``token_file``, the environment variable ``FEDCARE_TOKEN``, the
    token file of ``federation``."""

    def __init__(self, federation: Path | None, url: str | None, ca: Path | None,
                 token: str | None, token_file: Path | None = None) -> None:
        import os
        import ssl

        import httpx

        own_file: Path | None = None
        if federation is not None:
            from fedcare.pki.trust import (
                RESEARCHER_CONFIG_FILE,
                load_hub_config,
                load_researcher_config,
            )

            if (federation / RESEARCHER_CONFIG_FILE).is_file():  # a researcher folder
                mine = load_researcher_config(federation)
                url, ca, own_file = url or mine.hub_url, ca or mine.ca, mine.token
            else:  # the coordinator's own federation folder
                hub = load_hub_config(federation / "hub")
                url, ca = url or hub.url, ca or hub.tls.ca
                own_file = federation / "hub" / "researcher.token"
        if token is None and token_file is not None:
            try:
                token = token_file.read_text().strip()
            except OSError as exc:
                raise ConfigError(f"cannot read the token file {token_file}: "
                                  f"{exc.strerror or exc}") from exc
        if token is None:
            token = os.environ.get(TOKEN_ENV, "").strip() or None
        if token is None and own_file is not None and own_file.exists():
            token = own_file.read_text().strip()
        if not url or not ca or not token:
            raise ConfigError("give --federation DIR (or set FEDCARE_FEDERATION), or --hub URL "
                              "and --ca FILE with the researcher's token in --token-file FILE "
                              f"or the environment variable {TOKEN_ENV}")
        context = ssl.create_default_context(cafile=str(ca))
        self.http = httpx.Client(base_url=url, verify=context, timeout=60.0,
                                 headers={"Authorization": f"Bearer {token}"})

    def call(self, method: str, path: str, **kw: Any) -> Any:
        import httpx

        try:
            r = self.http.request(method, path, **kw)
        except httpx.HTTPError as exc:
            raise FedcareError(f"cannot reach the hub at {self.http.base_url}: {exc}") from exc
        if r.status_code >= 400:
            try:
                detail = r.json().get("detail", r.text)
            except ValueError:
                detail = r.text
            raise FedcareError(f"hub refused ({r.status_code}): {detail}")
        return r


def watch(client: HubClient, study_id: str, *,
          on_status: Callable[[dict[str, Any]], None] | None = None,
          poll: float = 0.5) -> dict[str, Any]:
    """Poll a study until it reaches a final state; ``on_status`` sees every status read.

    Asks for the last round's record only: all of them grow with the study, and a progress
    display polls every half second."""
    while True:
        st: dict[str, Any] = client.call("GET", f"/v1/studies/{study_id}",
                                         params={"rounds": 1}).json()
        if on_status is not None:
            on_status(st)
        if st["status"] in FINAL_STATES:
            return st
        time.sleep(poll)
