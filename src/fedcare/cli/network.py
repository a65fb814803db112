"""``fedcare hub``, ``fedcare node`` and ``fedcare study``: the networked federation."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from fedcare.cli.errors import fail
from fedcare.client import ARTIFACTS, HubClient, watch
from fedcare.core.errors import FedcareError
from fedcare.hub.schemas import Response, StudyStatus
from fedcare.reporting.progress import StudyProgress

if TYPE_CHECKING:
    from rich.table import Table

_R = TypeVar("_R", bound=Response)

console = Console()

hub_app = typer.Typer(help="Run the hub (the coordinating service).", no_args_is_help=True)
node_app = typer.Typer(help="Run a site node beside the data.", no_args_is_help=True)
study_app = typer.Typer(help="Submit studies to a hub and follow them.", no_args_is_help=True)


@hub_app.command("start")
def hub_start(
    kit: Annotated[Path, typer.Option(help="The hub folder made by `fedcare provision new`.")],
    data_dir: Annotated[Path | None, typer.Option(help="State folder (default: KIT/data).")]
    = None,
    db: Annotated[str | None, typer.Option(help="Database URL (default: SQLite in the state "
                                              "folder), e.g. postgresql://user@host/db")] = None,
    port: Annotated[int | None, typer.Option(help="Override the port in hub.toml.")] = None,
    host: Annotated[str | None, typer.Option(help="Override the address to bind.")] = None,
    max_body_mb: Annotated[int, typer.Option(
        min=1, help="Largest accepted reply upload (MB).")] = 2048,
    max_request_kb: Annotated[int, typer.Option(
        min=1, help="Largest accepted body of any other request (KB): a node's hello with "
                    "its datasets' quality reports, a study's config.")] = 1024,
    keep_replies: Annotated[bool, typer.Option(
        help="Store every site's update in the hub's blob store and keep it (default: held "
             "in memory until its round is aggregated, never written: studies resume from "
             "checkpoints, and an individual update is the most sensitive thing the hub "
             "handles).")] = False,
    api_docs: Annotated[bool, typer.Option(
        help="Serve the API's description (/docs, /redoc, /openapi.json) to the hub's "
             "users (any user's bearer token). Off by default.")] = False,
) -> None:
    """Start the hub over HTTPS with mutual TLS (nodes authenticate by certificate)."""
    from fedcare.hub.server import serve

    logging.basicConfig(level=logging.INFO, format="%(asctime)s hub %(message)s")
    try:
        serve(kit, data_dir or kit / "data", host=host, port=port, db_url=db,
              max_body=max_body_mb * 1024 * 1024, max_request=max_request_kb * 1024,
              keep_replies=keep_replies, api_docs=api_docs)
    except FedcareError as exc:
        raise fail(exc, 2) from None


@node_app.command("start")
def node_start(
    kit: Annotated[Path, typer.Option(help="The site's startup kit folder.")],
    data: Annotated[Path, typer.Option(help="The site's data config (datasets, approvals).")],
    state_dir: Annotated[Path | None, typer.Option(help="Site state folder.")] = None,
) -> None:
    """Start a site node: it only dials out to the hub, never listens."""
    from fedcare.node.agent import NodeAgent

    logging.basicConfig(level=logging.INFO, format="%(asctime)s node %(message)s")
    try:
        agent = NodeAgent(kit, data, state_dir=state_dir)
    except FedcareError as exc:
        raise fail(exc, 2) from None
    try:
        agent.run()
    except KeyboardInterrupt:
        pass
    finally:
        agent.close()


@node_app.command("privacy")
def node_privacy(
    kit: Annotated[Path, typer.Option(help="The site's startup kit folder.")],
    data: Annotated[Path, typer.Option(help="The site's data config (with a \\[privacy] policy).")],
    state_dir: Annotated[Path | None, typer.Option(help="Site state folder.")] = None,
    offline: Annotated[bool, typer.Option(
        help="Do not ask the hub for the ledger head it anchored (then a ledger cut at its "
             "end or deleted is found only against the head this node last kept).")] = False,
    sign_unsigned: Annotated[bool, typer.Option(
        help="Sign the entries of a ledger written before fedcare signed them. You vouch for "
             "them: check them against the hub's records first.")] = False,
) -> None:
    """Show what the site's data has spent of its privacy budget, and check the ledger: its
    hash chain, the site's signature on every entry, and that it extends the head the hub
    acknowledged (exit 1 if an entry was edited, removed or inserted, the ledger was cut at
    its end, deleted or rewritten)."""
    from fedcare.node.hub_link import LinkError
    from fedcare.node.ledger_anchor import ANCHOR_FILE, LedgerAnchor, hub_head, ledger_key
    from fedcare.node.local_config import load_node_data
    from fedcare.privacy.dp.ledger import PrivacyLedger, SitePrivacyPolicy

    hub_note = None
    try:
        node = load_node_data(data)
        if node.privacy_policy is None:
            raise FedcareError(f"{data} has no [privacy] policy: this site keeps no budget")
        policy = SitePrivacyPolicy.load(node.privacy_policy)
        state = state_dir or kit / "state"
        ledger = PrivacyLedger(state / "privacy-ledger.jsonl", policy,
                               key=ledger_key(kit, signing=sign_unsigned))
        kept = LedgerAnchor(ledger, state / ANCHOR_FILE).ledger.anchor
        anchored = None
        if not offline:
            try:
                anchored = hub_head(kit)
            except (LinkError, FedcareError) as exc:
                hub_note = f"could not ask the hub for the anchored ledger head ({exc})"
        if anchored is not None and (kept is None or anchored.count > kept.count):
            ledger.anchor = anchored
        if sign_unsigned:
            signed = ledger.sign_unsigned()
            console.print(f"signed {signed} unsigned ledger entries" if signed
                          else "every ledger entry was signed already")
        problems = ledger.verify()
        if kept is not None and ledger.anchor != kept:
            problems += [p for p in ledger.verify(kept) if p not in problems]
        spent = ledger.spent() if not problems else None
    except FedcareError as exc:
        raise fail(exc, 2) from None
    if spent is not None:
        console.print(f"spent epsilon {spent.epsilon:.3f} of {policy.max_epsilon} at delta "
                      f"{policy.delta} ({spent.dp_tasks} DP tasks, {spent.non_dp_tasks} "
                      "without DP)")
        for e in ledger.entries()[-10:]:
            console.print(f"  {e.time}  {e.study} round {e.round}  {e.mechanism.value}  "
                          f"z={e.noise_multiplier:g} q={e.sample_rate:g} steps={e.steps}")
    if problems:
        for p in problems:
            console.print(f"[red]{escape(p)}[/red]")
        raise typer.Exit(1)
    head = ledger.head()
    console.print(f"[green]ledger verified: hash chain and site signatures of {head.count} "
                  "entries[/green]")
    if ledger.anchor is not None:
        source = ("the hub" if ledger.anchor == anchored
                  else "the hub, as this node last kept it")
        console.print(f"[green]it extends the head {ledger.anchor.count}:"
                      f"{ledger.anchor.hash[:12]}... anchored by {source}[/green]")
    if offline or hub_note is not None:
        console.print(f"[yellow]{escape(hub_note or 'offline')}: checked the hash chain, the "
                      "site's signatures and the head this node last kept only - a ledger cut "
                      "at its end or deleted (with that copy) is found only against the "
                      "hub's anchor[/yellow]")
    elif ledger.anchor is None:
        console.print("the hub holds no ledger head for this site yet")


Federation = Annotated[Path | None, typer.Option(
    envvar="FEDCARE_FEDERATION", show_envvar=True,
    help="Your user folder (FED/researcher or FED/admin from `fedcare provision new`), or "
         "the coordinator's federation folder: reads the hub URL, the CA and your token file "
         "(researcher.token, admin.token). Set FEDCARE_FEDERATION once instead.")]
HubUrl = Annotated[str | None, typer.Option("--hub", help="Hub URL (without --federation).")]
CaFile = Annotated[Path | None, typer.Option(help="Federation CA certificate.")]
TokenFile = Annotated[Path | None, typer.Option(
    "--token-file", help="File holding your token (default: the environment "
    "variable FEDCARE_TOKEN, else researcher.token in the --federation folder). The token "
    "itself is never a command-line argument: it would show in `ps` and shell history.")]


def _client(federation: Path | None, hub: str | None, ca: Path | None,
            token_file: Path | None) -> HubClient:
    try:
        return HubClient(federation, hub, ca, None, token_file)
    except FedcareError as exc:
        raise fail(exc, 2) from None


@study_app.command("submit")
def submit(config: Annotated[Path, typer.Argument(help="Study file (.toml/.yaml).")],
           federation: Federation = None, hub: HubUrl = None, ca: CaFile = None,
           token_file: TokenFile = None,
           wait: Annotated[bool, typer.Option(help="Follow progress until it ends.")] = False,
           force: Annotated[bool, typer.Option(
               "--force", help="Submit a DP-FedAvg study the hub's DP check refuses (its "
               "noise drowns the updates).")] = False,
           ) -> None:
    """Submit a study (data.source = "federation"); prints its id and content hash."""
    from fedcare.config import load_config

    client = _client(federation, hub, ca, token_file)
    try:
        done = client.submit(load_config(config), force=force)
    except FedcareError as exc:
        raise fail(exc, 2) from None
    console.print(f"study [bold]{done.study_id}[/bold] submitted to sites {done.sites} "
                  f"(content hash {done.config_hash})")
    if done.status == "pending_approval":
        console.print(f"pending approval: it starts once every site's data steward approved "
                      f"it (`fedcare node approve {done.config_hash[:12]}` at each site)")
    if wait:
        follow(client, done.study_id)


def follow(client: HubClient, study_id: str, poll: float = 0.5) -> StudyStatus:
    """Progress bar until the study completes, fails or is paused; exit 1 unless it
    completed. A completed study's rounds follow (the primary metric of the federation and
    of each site, as `fedcare study status` shows them); its files (model, history, report)
    leave the hub only through the airlock (`fedcare export request`)."""
    from fedcare.cli.render import rounds_table

    with StudyProgress(console) as bar:
        st = watch(client, study_id, on_status=bar, poll=poll)
    if st.status != "completed":
        raise fail(FedcareError(f"study {study_id} {st.status}: {st.error}"), 1)
    try:
        full = client.status(study_id)
    except FedcareError as exc:
        console.print(f"[yellow]study {study_id} completed, but its rounds could not be "
                      f"read: {escape(str(exc))}[/yellow]")
        return st
    console.print(rounds_table(full))
    console.print(f"Its files ({', '.join(ARTIFACTS)}) leave the hub through the airlock: "
                  f"`fedcare export request {study_id} FILE --why ...`, then the sites' "
                  "stewards approve.")
    return st


@study_app.command("status")
def status(study_id: str, federation: Federation = None, hub: HubUrl = None,
           ca: CaFile = None, token_file: TokenFile = None) -> None:
    """Show a study's status and its rounds, with metrics.

    Per round: the primary metric of the federation and of each site, the sites that
    answered, the time, and the cumulative epsilon of a DP study."""
    from fedcare.cli.render import approvals_table, rounds_table

    client = _client(federation, hub, ca, token_file)
    try:
        st = client.status(study_id)
    except FedcareError as exc:
        raise fail(exc, 2) from None
    console.print(f"{escape(st.name)} ({study_id}): [bold]{st.status}[/bold], round "
                  f"{st.current_round}/{st.rounds_planned}, sites "
                  f"{escape(', '.join(st.sites))}, created {st.created}")
    if st.error:
        console.print(f"[red]{escape(st.error)}[/red]")
    if st.approvals:
        console.print(approvals_table(st))
    waiting = st.undecided()
    if waiting and st.status == "pending_approval":
        console.print(f"[yellow]waiting for the approval of {escape(', '.join(waiting))}"
                      f"[/yellow] (`fedcare node approve {st.config_hash[:12]}` at each)")
    if st.rounds:
        console.print(rounds_table(st))
    for r in st.rounds:
        for site, why in r.sites_failed.items():
            console.print(f"  round {r.round}: [yellow]{escape(site)} failed:[/yellow] "
                          f"{escape(why)}")


@study_app.command("list")
def study_list(federation: Federation = None, hub: HubUrl = None, ca: CaFile = None,
               token_file: TokenFile = None,
               as_json: Annotated[bool, typer.Option("--json", help="Print raw JSON.")] = False
               ) -> None:
    """List the hub's studies: id, name, status, round reached, when submitted."""
    from fedcare.cli.render import studies_table

    client = _client(federation, hub, ca, token_file)
    _show_list(client.studies, studies_table,
               "no studies yet: `fedcare study submit STUDY.toml`", as_json)


def _show_list(read: Callable[[], Sequence[_R]], table: Callable[[Sequence[_R]], Table],
               empty: str, as_json: bool) -> None:
    """Read a list from the hub and print it as JSON, as a table, or say it is empty."""
    try:
        listed = read()
    except FedcareError as exc:
        raise fail(exc, 2) from None
    if as_json:
        console.print_json(json.dumps([x.model_dump(mode="json") for x in listed]))
    elif not listed:
        console.print(empty)
    else:
        console.print(table(listed))


def sites(federation: Federation = None, hub: HubUrl = None, ca: CaFile = None,
          token_file: TokenFile = None,
          as_json: Annotated[bool, typer.Option("--json", help="Print raw JSON.")] = False
          ) -> None:
    """List the federation's sites: online, last seen, version, datasets.

    A site is online when its node polled the hub within the last minute; each dataset is
    shown with the rows the site declared."""
    from fedcare.cli.render import sites_table

    _show_list(_client(federation, hub, ca, token_file).sites, sites_table,
               "no site has connected yet: start a node with `fedcare node start`", as_json)


@study_app.command("resume")
def resume(study_id: str, federation: Federation = None, hub: HubUrl = None,
           ca: CaFile = None, token_file: TokenFile = None,
           wait: Annotated[bool, typer.Option(help="Follow progress until it ends.")] = False
           ) -> None:
    """Continue a paused study (the hub could not write its storage: disk full, read-only)
    from its last completed round, once the hub's storage is fixed."""
    client = _client(federation, hub, ca, token_file)
    try:
        resumed = client.resume(study_id)
    except FedcareError as exc:
        raise fail(exc, 2) from None
    console.print(f"study [bold]{study_id}[/bold] resumed after round "
                  f"{resumed.resumed_after_round}")
    if wait:
        follow(client, study_id)


@study_app.command("logs")
def logs(study_id: str, federation: Federation = None, hub: HubUrl = None,
         ca: CaFile = None, token_file: TokenFile = None) -> None:
    """Print the hub's event log for a study (rounds, rejected replies, failures)."""
    client = _client(federation, hub, ca, token_file)
    try:
        events = client.events(study_id)
    except FedcareError as exc:
        raise fail(exc, 2) from None
    for e in events:
        console.print(f"{e.at}  {e.kind:<9} {escape(e.message)}")




@study_app.command("data")
def data_quality(dataset: str, federation: Federation = None, hub: HubUrl = None,
                 ca: CaFile = None, token_file: TokenFile = None,
                 as_json: Annotated[bool, typer.Option("--json", help="Print raw JSON.")] = False
                 ) -> None:
    """Compare the sites' quality reports for a clinical dataset before training on it:
    distribution shift, label-rate outliers (a likely label-definition mismatch), code
    coverage gaps, unit problems, and sites that will refuse."""
    client = _client(federation, hub, ca, token_file)
    try:
        q = client.dataset_quality(dataset)
    except FedcareError as exc:
        raise fail(exc, 2) from None
    if as_json:
        console.print_json(q.model_dump_json())
        return
    from fedcare.cli.render import quality_table

    console.print(quality_table(q))
    for site, why in q.refusing.items():
        console.print(f"[red]{escape(site)} refuses to train: {escape(str(why))}[/red]")
    findings = q.findings
    if not findings:
        console.print("[green]no distribution shift, label-rate, coverage or unit findings[/]")
    for f in findings:
        console.print(f"[yellow]{f['kind']}[/yellow] {escape(f['message'])}")
