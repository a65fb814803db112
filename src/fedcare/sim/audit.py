"""A simulation's audit log: ``DIR/audit.jsonl`` of ``fedcare simulate --out DIR``.

The same signed, hash-chained format as the hub's and the nodes' logs
(:mod:`fedcare.governance.audit_log`), written when the run's outputs are: the study (content
hash, sites), each site a ``--site-policy`` refused (``policy_refused``), each round
aggregated (its sites and a digest of its round record), the model released (the SHA-256 of
``model.safetensors``) and the run's end. It is signed with a key made for the run and saved
beside it (``audit-key.pem``, owner-only, and ``audit-key.pub.pem``), so **in simulation it
proves the integrity of the file, not anyone's identity**: whoever holds the run folder holds
the key. A resumed or re-run simulation writes a new log with a new key. Check it with
``fedcare audit verify --run DIR``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from fedcare.config import StudyConfig, content_hash
from fedcare.engine.history import History
from fedcare.governance.audit_log import (
    EventKind,
    PublicKey,
    Signer,
    append,
    canonical,
    generate_key,
    load_public_key,
    public_pem,
    save_private_key,
)

LOG_FILE = "audit.jsonl"
KEY_FILE = "audit-key.pem"
PUBLIC_FILE = "audit-key.pub.pem"
ACTOR = "user:simulation"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_run_audit(out: Path, cfg: StudyConfig, history: History) -> Path:
    """Write ``out/audit.jsonl`` for a finished run (replacing an earlier one and its key)."""
    log_file = out / LOG_FILE
    log_file.unlink(missing_ok=True)
    key = generate_key()
    save_private_key(key, out / KEY_FILE)
    (out / PUBLIC_FILE).write_bytes(public_pem(key))
    signer = Signer(ACTOR, key)
    name = cfg.study.name[:200]
    sites = [str(s.get("name", "")) for s in history.sites if isinstance(s, dict)] or sorted(
        {s for r in history.rounds for s in r.sites_sampled})
    append(log_file, signer, EventKind.STUDY_SUBMITTED, "simulation",
           {"study": name, "content_hash": content_hash(cfg), "sites": sites,
            "mode": "simulation"})
    refused = history.meta.get("site_policy", {}).get("refused", {})
    for site, why in sorted(refused.items()):  # sites a --site-policy refused (left out)
        append(log_file, signer, EventKind.POLICY_REFUSED, "simulation",
               {"site": str(site)[:200], "why": str(why)[:1500]})
    for record in history.rounds:
        plain = _plain(json.loads(json.dumps(asdict(record), default=str)))
        digest = hashlib.sha256(canonical(plain)).hexdigest()
        append(log_file, signer, EventKind.AGGREGATED, "simulation",
               {"round": record.round, "sites": sorted(record.sites_completed),
                "digest": digest, "digest_of": "round record"})
    files = {n: _sha256(out / n) for n in ("model.safetensors", "model.xgb.json")
             if (out / n).is_file()}
    if "model.safetensors" in files:
        append(log_file, signer, EventKind.MODEL_RELEASED, "simulation",
               {"digest": files["model.safetensors"], "files": files})
    append(log_file, signer, EventKind.STUDY_ENDED, "simulation",
           {"status": "completed", "rounds": len(history.rounds)})
    return log_file


def run_log_and_keys(run: Path) -> tuple[Path, dict[str, PublicKey]]:
    """A simulation run's audit log and the key that verifies it (from beside it)."""
    return run / LOG_FILE, {ACTOR: load_public_key(run / PUBLIC_FILE)}


def _plain(value: Any) -> Any:
    """JSON-safe: non-finite floats become strings (a round record may hold NaN metrics)."""
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else repr(value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
