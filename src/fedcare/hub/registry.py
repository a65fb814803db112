"""The hub's read side of the model registry (``GET /v1/models...``): listed, read and
rendered as cards. There is no write route: entries are added only by the study runner when
a study finishes (:meth:`fedcare.hub.runner.StudyRunner._release`)."""

from __future__ import annotations

from typing import Any

from fedcare.engine.registry import RegistryEntry, card_html, card_markdown
from fedcare.hub.errors import NotFound
from fedcare.hub.state import HubState
from fedcare.hub.store.registry import ModelRegistryRepo


class ModelDesk:
    def __init__(self, state: HubState) -> None:
        self.state = state

    def list(self, study_id: str | None = None) -> list[dict[str, Any]]:
        with self.state.db.session() as s:
            rows = ModelRegistryRepo(s).list(study_id)
            return [_summary(r.entry) for r in rows]

    def get(self, entry_id: str) -> RegistryEntry:
        with self.state.db.session() as s:
            row = ModelRegistryRepo(s).get(entry_id)
            if row is None:
                raise NotFound(f"no registered model {entry_id!r} (see GET /v1/models)")
            doc = dict(row.entry)
        entry = RegistryEntry.model_validate(doc)
        entry.verify()
        return entry

    def card(self, entry_id: str, html: bool) -> str:
        entry = self.get(entry_id)
        return card_html(entry) if html else card_markdown(entry)


def _summary(doc: dict[str, Any]) -> dict[str, Any]:
    metric = doc.get("primary_metric", "")
    return {"id": doc["id"], "study": doc.get("study", ""), "study_id": doc.get("study_id"),
            "study_hash": doc.get("study_hash", ""), "created": doc.get("created", ""),
            "model": doc.get("model", ""), "strategy": doc.get("strategy", ""),
            "rounds": doc.get("rounds", 0), "primary_metric": metric,
            "score": (doc.get("global_metrics") or {}).get(metric),
            "privacy": (doc.get("privacy") or {}).get("mode", "none"),
            "sites": [s.get("name") for s in doc.get("sites") or []]}
