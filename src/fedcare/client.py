"""The researcher's client of a networked hub, shared by the CLI, the demo and notebooks.

It lives outside :mod:`fedcare.cli` so that every caller - the ``fedcare study`` commands, the
demo, a script, later the dashboard's tests - talks to the hub through the same code, and the
CLI only renders (architecture review P8). It knows the hub's HTTP API, never its internals:
every method returns the typed response of :mod:`fedcare.hub.schemas`::

    client = HubClient(Path("fed/researcher"), None, None, None)
    study = client.submit(load_config("study.toml"))
    final = watch(client, study.study_id)
    print(final.status, final.rounds[-1].global_metrics)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel, TypeAdapter
from pydantic import ValidationError as PydanticValidationError

from fedcare.core.errors import ConfigError, FedcareError
from fedcare.hub.schemas import (
    DatasetQuality,
    ErrorBody,
    Event,
    ExportInfo,
    Health,
    ModelSummary,
    Resumed,
    SiteInfo,
    StudyStatus,
    StudySummary,
    Submitted,
    UserCreated,
    UserSummary,
)

if TYPE_CHECKING:
    import httpx

    from fedcare.engine.registry import RegistryEntry

_M = TypeVar("_M")

_STUDIES = TypeAdapter(list[StudySummary]).validate_json
_SITES = TypeAdapter(list[SiteInfo]).validate_json
_EVENTS = TypeAdapter(list[Event]).validate_json
_MODELS = TypeAdapter(list[ModelSummary]).validate_json
_EXPORTS = TypeAdapter(list[ExportInfo]).validate_json
_USERS = TypeAdapter(list[UserSummary]).validate_json

#: The files a finished study leaves on the hub. None of them is served as such: each leaves
#: through the airlock (``HubClient.request_export``, stewards' approval, ``download_export``).
ARTIFACTS = ("history.json", "model.safetensors", "report.html")
#: Files only some studies have: the registry entry (studies released since the model
#: registry) and an xgboost study's XGBoost model file.
OPTIONAL_ARTIFACTS = ("registry.json", "model.xgb.json")

#: Study states after which nothing more happens without a researcher's action (a paused
#: study waits for `fedcare study resume`).
FINAL_STATES = frozenset({"completed", "failed", "cancelled", "paused", "rejected", "expired"})


#: The header an export's download names its approved SHA-256 in.
SHA_HEADER = "X-Content-SHA256"

#: Environment variable holding the researcher's bearer token (the secret itself), for
#: scripts and CI; a command line never carries it (it would show in `ps` and shell history).
TOKEN_ENV = "FEDCARE_TOKEN"


class HubClient:
    """A hub user's HTTPS client (server verified against the federation CA).

    The credential is the user's own bearer token: a researcher's is ``researcher.token`` in
    the researcher folder, the first admin's ``admin.token`` in the admin folder (both
    written by provisioning), anyone else's the one ``fedcare users add`` made. It is taken
    from, first to last: ``token``, the file ``token_file``, the environment variable
    ``FEDCARE_TOKEN``, the token file of ``federation`` (a user's folder, or the
    coordinator's federation folder, whose ``user_folder`` sub-folder is then used:
    ``researcher`` or ``admin``)."""

    def __init__(self, federation: Path | None, url: str | None, ca: Path | None,
                 token: str | None, token_file: Path | None = None, *,
                 user_folder: str = "researcher") -> None:
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
                mine_file = federation / user_folder / RESEARCHER_CONFIG_FILE
                if mine_file.is_file():
                    own_file = load_researcher_config(mine_file.parent).token
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
                              "and --ca FILE with your token in --token-file FILE "
                              f"or the environment variable {TOKEN_ENV}")
        context = ssl.create_default_context(cafile=str(ca))
        self.http = httpx.Client(base_url=url, verify=context, timeout=60.0,
                                 headers={"Authorization": f"Bearer {token}"})

    # -- the API, typed ------------------------------------------------------------------
    def health(self) -> Health:
        return self._get(Health.model_validate_json, "GET", "/v1/health")

    def submit(self, config: BaseModel | Mapping[str, Any], *, force: bool = False
               ) -> Submitted:
        """Submit a study (a :class:`fedcare.config.StudyConfig` or its dict; data.source =
        "federation"). ``force``: run a DP-FedAvg study the hub's DP check refuses."""
        doc = (config.model_dump(mode="json") if isinstance(config, BaseModel)
               else dict(config))
        return self._get(Submitted.model_validate_json, "POST", "/v1/studies", json=doc,
                         params={"force": "true"} if force else None)

    def status(self, study_id: str, last_rounds: int | None = None) -> StudyStatus:
        """A study's state and its rounds (``last_rounds``: only the last that many)."""
        return self._get(StudyStatus.model_validate_json, "GET", f"/v1/studies/{study_id}",
                         params=None if last_rounds is None else {"rounds": last_rounds})

    def studies(self) -> list[StudySummary]:
        return self._get(_STUDIES, "GET", "/v1/studies")

    def sites(self) -> list[SiteInfo]:
        return self._get(_SITES, "GET", "/v1/sites")

    def events(self, study_id: str) -> list[Event]:
        """The hub's event log of a study, oldest first."""
        return self._get(_EVENTS, "GET", f"/v1/studies/{study_id}/events")

    def resume(self, study_id: str) -> Resumed:
        return self._get(Resumed.model_validate_json, "POST", f"/v1/studies/{study_id}/resume")

    def dataset_quality(self, dataset: str) -> DatasetQuality:
        return self._get(DatasetQuality.model_validate_json, "GET",
                         f"/v1/datasets/{dataset}/quality")

    # -- the model registry ---------------------------------------------------------------
    def models(self, study_id: str | None = None) -> list[ModelSummary]:
        """Released models (``study_id``: only that study's), oldest first."""
        return self._get(_MODELS, "GET", "/v1/models",
                         params=None if study_id is None else {"study": study_id})

    def model_entry(self, entry_id: str) -> RegistryEntry:
        """A released model's registry entry, checked against its id."""
        from fedcare.engine.registry import RegistryEntry

        entry = self._get(RegistryEntry.model_validate_json, "GET", f"/v1/models/{entry_id}")
        entry.verify()
        return entry

    def model_card(self, entry_id: str, fmt: str = "md") -> str:
        """A released model's card: ``md`` (Markdown) or ``html`` (one self-contained page)."""
        if fmt not in ("md", "html"):
            raise ConfigError(f"card format {fmt!r}: md or html")
        return self.call("GET", f"/v1/models/{entry_id}/card", params={"format": fmt}).text

    # -- the output airlock ----------------------------------------------------------------
    def request_export(self, study_id: str, artifact: str, reason: str) -> ExportInfo:
        """Ask to take one of a study's files out of the federation: the hub runs its
        automatic checks (``refusals``, ``flags``), then the stewards decide."""
        return self._get(ExportInfo.model_validate_json, "POST",
                         f"/v1/studies/{study_id}/exports",
                         json={"artifact": artifact, "reason": reason})

    def exports(self) -> list[ExportInfo]:
        """The export requests this user may see (a researcher: their own; a steward: their
        site's studies'; admin, auditor: all)."""
        return self._get(_EXPORTS, "GET", "/v1/exports")

    def export(self, export_id: str) -> ExportInfo:
        return self._get(ExportInfo.model_validate_json, "GET", f"/v1/exports/{export_id}")

    def decide_export(self, export_id: str, *, approve: bool, reason: str) -> ExportInfo:
        """A site steward's decision (once per site, final)."""
        return self._get(ExportInfo.model_validate_json, "POST",
                         f"/v1/exports/{export_id}/decision",
                         json={"decision": "approve" if approve else "reject",
                               "reason": reason})

    def download_export(self, export_id: str) -> tuple[bytes, str]:
        """An approved export's bytes and their SHA-256, checked here against the digest the
        hub names (the one the stewards approved)."""
        import hashlib

        r = self.call("GET", f"/v1/exports/{export_id}/download")
        digest = r.headers.get(SHA_HEADER, "")
        if hashlib.sha256(r.content).hexdigest() != digest:
            raise FedcareError(f"export {export_id} arrived damaged: its SHA-256 is not the "
                               f"approved one the hub named ({digest or 'none'})")
        return r.content, digest

    # -- people (admins) -----------------------------------------------------------------
    def add_user(self, name: str, role: str, site: str | None = None) -> UserCreated:
        """A new user; the answer's ``token`` is shown this once."""
        return self._get(UserCreated.model_validate_json, "POST", "/v1/users",
                         json={"name": name, "role": role, "site": site})

    def users(self) -> list[UserSummary]:
        return self._get(_USERS, "GET", "/v1/users")

    def revoke_user(self, name: str) -> UserSummary:
        return self._get(UserSummary.model_validate_json, "DELETE", f"/v1/users/{name}")

    # -- plumbing -------------------------------------------------------------------------
    def call(self, method: str, path: str, **kw: Any) -> httpx.Response:
        """One request; a refusal (4xx/5xx) raises :class:`FedcareError` with the hub's
        ``detail``."""
        import httpx

        try:
            r = self.http.request(method, path, **kw)
        except httpx.HTTPError as exc:
            raise FedcareError(f"cannot reach the hub at {self.http.base_url}: {exc}") from exc
        if r.status_code >= 400:
            try:
                detail: Any = ErrorBody.model_validate_json(r.content).detail
            except PydanticValidationError:
                detail = r.text
            raise FedcareError(f"hub refused ({r.status_code}): {detail}")
        return r

    def _get(self, parse: Callable[[bytes], _M], method: str, path: str, **kw: Any) -> _M:
        """``call`` and ``parse`` the answer (a hub that answers something else is a
        FedcareError that says what did not match)."""
        r = self.call(method, path, **kw)
        try:
            parsed = parse(r.content)
        except PydanticValidationError as exc:
            raise FedcareError(f"the hub's answer to {method} {path} is not what this client "
                               f"expects (hub version?): {exc}") from exc
        return parsed


def watch(client: HubClient, study_id: str, *,
          on_status: Callable[[StudyStatus], None] | None = None,
          poll: float = 0.5) -> StudyStatus:
    """Poll a study until it reaches a final state; ``on_status`` sees every status read.

    Asks for the last round's record only: all of them grow with the study, and a progress
    display polls every half second."""
    while True:
        st = client.status(study_id, last_rounds=1)
        if on_status is not None:
            on_status(st)
        if st.status in FINAL_STATES:
            return st
        time.sleep(poll)


__all__ = ["ARTIFACTS", "FINAL_STATES", "OPTIONAL_ARTIFACTS", "TOKEN_ENV", "HubClient", "watch"]
