"""``fedcare node studies|approve|reject|revoke`` (the site's data steward) and ``fedcare
study hash`` (the researcher, before submitting).

Run on the node's machine: they read and write the site's decisions file in the node's
state folder (:mod:`fedcare.node.approvals`), which the running node reads on every task and
reports to the hub, so no restart is needed. Thin: every rule is in the store. Errors are a
red line and exit code 2.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from fedcare.cli.errors import fail
from fedcare.cli.network import node_app, study_app
from fedcare.core.errors import FedcareError
from fedcare.governance.approvals import Decision

if TYPE_CHECKING:
    from fedcare.node.approvals import ApprovalStore

console = Console()

Kit = Annotated[Path, typer.Option(help="The site's startup kit folder (its state folder is "
                                        "KIT/state unless --state-dir).")]
StateDir = Annotated[Path | None, typer.Option(help="The node's state folder, when it runs "
                                                    "with --state-dir.")]
HashArg = Annotated[str, typer.Argument(help="The study's content hash, or its first 8+ hex "
                                              "digits (`fedcare node studies` lists them).")]
Why = Annotated[str | None, typer.Option("--why", help="Why (required; the researcher sees "
                                                       "it in `fedcare study status`).")]


def _store(kit: Path, state_dir: Path | None) -> ApprovalStore:
    from fedcare.node.approvals import APPROVALS_FILE, ApprovalStore

    state = state_dir or kit / "state"
    if not (state / APPROVALS_FILE).is_file():
        raise fail(FedcareError(f"no study decisions in {state} ({APPROVALS_FILE}): has this "
                                "site's node run (`fedcare node start`)? Give its --state-dir "
                                "if it runs with one"), 2)
    return ApprovalStore(state / APPROVALS_FILE)


@node_app.command("studies")
def node_studies(
    kit: Kit, state_dir: StateDir = None,
    show: Annotated[str | None, typer.Option(
        "--show", help="Print one study's full config (HASH or a unique prefix).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print raw JSON.")] = False,
) -> None:
    """The studies the hub named this site in: pending ones await your decision."""
    store = _store(kit, state_dir)
    try:
        if show is not None:
            st = store.study(show)
            console.print(f"study {escape(st.name)!r}  content hash [bold]{st.hash}[/bold]\n"
                          f"hub study ids {', '.join(st.study_ids)}; sites "
                          f"{', '.join(st.sites)}; first seen {st.first_seen}")
            console.print_json(json.dumps(st.config))
            if st.decision is None:
                console.print(f"pending: `fedcare node approve {st.hash[:12]}` or `fedcare "
                              f"node reject {st.hash[:12]} --why ...`")
            return
        studies = store.studies()
    except FedcareError as exc:
        raise fail(exc, 2) from None
    if as_json:
        console.print_json(json.dumps([{
            "hash": s.hash, "name": s.name, "study_ids": s.study_ids, "sites": s.sites,
            "first_seen": s.first_seen,
            "decision": None if s.decision is None else s.decision.decision.value,
            "reason": None if s.decision is None else s.decision.reason,
            "by": None if s.decision is None else s.decision.who,
            "at": None if s.decision is None else s.decision.at} for s in studies]))
        return
    if not studies:
        console.print("no study has named this site yet")
        return
    table = Table("content hash", "study", "sites", "first seen", "decision", "by", "reason")
    for s in studies:
        d = s.decision
        table.add_row(s.hash[:16], escape(s.name), escape(", ".join(s.sites)), s.first_seen,
                      "[yellow]pending[/yellow]" if d is None else d.decision.value,
                      "" if d is None else escape(d.who),
                      "" if d is None or d.reason is None else escape(d.reason))
    console.print(table)


def _decide(kit: Path, state_dir: Path | None, prefix: str, decision: Decision,
            why: str | None) -> None:
    store = _store(kit, state_dir)
    try:
        full, record = store.decide(prefix, decision, why)
    except FedcareError as exc:
        raise fail(exc, 2) from None
    console.print(f"study {full} {decision.value} by {escape(record.who)}; the running node "
                  "tells the hub within seconds (no restart needed)")


@node_app.command("approve")
def node_approve(content_hash: HashArg, kit: Kit, state_dir: StateDir = None,
                 why: Annotated[str | None, typer.Option("--why", help="An optional note.")]
                 = None) -> None:
    """Approve a study's exact content hash: this site takes part in it."""
    _decide(kit, state_dir, content_hash, Decision.APPROVED, why)


@node_app.command("reject")
def node_reject(content_hash: HashArg, kit: Kit, why: Why = None,
                state_dir: StateDir = None) -> None:
    """Reject a pending study (the study ends as rejected, with your reason)."""
    _decide(kit, state_dir, content_hash, Decision.REJECTED, why)


@node_app.command("revoke")
def node_revoke(content_hash: HashArg, kit: Kit, why: Why = None,
                state_dir: StateDir = None) -> None:
    """Withdraw an approval: the node refuses the study's next task and the hub leaves this
    site out of its later rounds."""
    _decide(kit, state_dir, content_hash, Decision.REVOKED, why)


@study_app.command("hash")
def study_hash(config: Annotated[Path, typer.Argument(help="Study file (.toml/.yaml).")]
               ) -> None:
    """Print a study's content hash (what each site's steward approves), before submitting
    it: the config, its data contract and model included; any change gives another hash."""
    from fedcare.config import content_hash, load_config

    try:
        print(content_hash(load_config(config)))
    except FedcareError as exc:
        raise fail(exc, 2) from None
