"""``fedcare audit``: empirical privacy checks of a finished study (thin over the
membership-inference attacks in :mod:`fedcare.attacks.membership`), and the signed audit
trails (``verify``, ``export``: :mod:`fedcare.governance.audit_log`)."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from fedcare.cli.errors import fail
from fedcare.core.errors import FedcareError

app = typer.Typer(name="audit", help="Audit a finished study (membership inference) and "
                                     "verify or export signed audit logs.",
                  no_args_is_help=True, add_completion=False, rich_markup_mode="rich")
console = Console()


@app.callback()
def _group() -> None:
    """Audit a finished study (membership inference); verify or export signed audit logs."""


class Attack(StrEnum):
    loss = "loss"
    lira = "lira"


@app.command()
def privacy(
    run: Annotated[Path, typer.Option("--run", help="Run folder written by `fedcare simulate "
                                                    "--out`.")],
    site: Annotated[str | None, typer.Option(help="Audit one site's rows (default: all).")]
    = None,
    attack: Annotated[Attack, typer.Option(help="loss (Yeom et al. 2018) or lira (Carlini et "
                                                "al. 2022, shadow models).")] = Attack.loss,
    shadows: Annotated[int, typer.Option(help="LiRA: number of shadow models.")] = 8,
    offline: Annotated[bool, typer.Option(help="LiRA: offline variant (OUT shadows only).")]
    = False,
    epochs: Annotated[int | None, typer.Option(
        help="LiRA: shadow training epochs (default: rounds x local_epochs).")] = None,
    seed: Annotated[int, typer.Option(help="Seed for the shadows' data halves.")] = 0,
    site_data: Annotated[Path | None, typer.Option(
        help="Networked study: this site's own table (CSV/Parquet), with --site.")] = None,
) -> None:
    """Membership inference against the run's final model: can an attacker tell training rows
    from held-out rows? Writes audit/privacy-ATTACK-SITE.json, .png and .html in the run."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from fedcare.attacks.membership import AuditSettings, audit_run
    from fedcare.attacks.membership.figure import describe_privacy

    try:
        settings = AuditSettings(attack=attack.value, shadows=shadows, online=not offline,
                                 epochs=epochs, seed=seed, site=site, site_data=site_data)
        if attack is Attack.lira:
            with Progress("[bold]shadow models", BarColumn(), MofNCompleteColumn(),
                          TimeElapsedColumn(), console=console) as bar:
                task = bar.add_task("shadows", total=shadows)
                result = audit_run(run, settings, progress=lambda done, _total: bar.update(
                    task, completed=done))
        else:
            result = audit_run(run, settings)
    except FedcareError as exc:  # missing/invalid run folder, unknown site: exit 2
        raise fail(exc) from None
    table = Table(title=escape(f"Membership inference: {result.attack} ({result.variant}) on "
                               f"{result.site}"))
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("members / non-members", f"{result.members} / {result.non_members}")
    table.add_row("ROC AUC (0.5 = chance)", f"{result.auc:.3f}")
    for fpr, tpr in result.tpr_at_fpr.items():
        table.add_row(f"TPR at FPR {float(fpr):.1%}", f"{tpr:.3f}")
    table.add_row("study privacy", escape(describe_privacy(result.privacy)))
    console.print(table)
    if result.non_members < 1000:
        console.print(f"[dim]{result.non_members} non-members: FPRs below "
                      f"{1 / result.non_members:.2%} cannot be resolved.[/dim]")
    console.print(f"Wrote [bold]{escape(str(Path(run) / 'audit'))}[/bold]")
    history_file = Path(run) / "history.json"
    if history_file.is_file():  # re-render the run's report with the audit in it
        import json

        from fedcare.reporting import write_report

        write_report(json.loads(history_file.read_text()), Path(run) / "report.html")
        console.print(f"Updated [bold]{escape(str(Path(run) / 'report.html'))}[/bold]")


# --- signed audit logs ------------------------------------------------------------------------
LogOption = Annotated[Path | None, typer.Option("--log", help="An audit log (JSON Lines).")]
KeyOption = Annotated[Path | None, typer.Option(
    "--key", help="PEM public key or certificate of the log's actor (pin it: a key read from "
                  "beside the log proves only that the file is intact).")]
KeysDirOption = Annotated[Path | None, typer.Option(
    "--keys-dir", help="Folder of keys: hub*.pem (the hub), site-NAME.pem / .crt or "
                       "NAME/site.crt (a site; the coordinator's sites/ folder serves), "
                       "user-NAME.pem.")]
HubDirOption = Annotated[Path | None, typer.Option(
    "--hub-dir", help="The hub's state folder (or its kit folder): its log and public key.")]
NodeDirOption = Annotated[Path | None, typer.Option(
    "--node-dir", help="A site's kit folder: its node's log (state/audit.jsonl) and site.crt.")]
StateDirOption = Annotated[Path | None, typer.Option(
    "--state-dir", help="With --node-dir: the node's state folder, if not KIT/state.")]
RunOption = Annotated[Path | None, typer.Option(
    "--run", help="A `fedcare simulate --out` folder: its audit.jsonl and per-run key.")]


def _keys_dir(folder: Path) -> dict[str, Any]:
    from fedcare.governance.audit_log import load_public_key

    if not folder.is_dir():
        raise FedcareError(f"--keys-dir {folder} is not a folder")
    keys: dict[str, Any] = {}
    for path in sorted(folder.iterdir()):
        if path.is_dir() and (path / "site.crt").is_file():
            keys[f"site:{path.name}"] = load_public_key(path / "site.crt")
        elif path.suffix in (".pem", ".crt") and path.is_file():
            stem = path.name.removesuffix(".pub.pem").removesuffix(path.suffix)
            if stem.startswith("hub"):
                keys["hub"] = load_public_key(path)
            elif stem.startswith(("site-", "user-")):
                role, name = stem.split("-", 1)
                keys[f"{role}:{name}"] = load_public_key(path)
    if not keys:
        raise FedcareError(f"no keys in {folder} (hub*.pem, site-NAME.pem, NAME/site.crt)")
    return keys


def _log_name(path: Path) -> str | None:
    """The log's name as its first line says (unverified: only to pick the key)."""
    import json

    try:
        with open(path, "rb") as fh:
            doc = json.loads(fh.readline())
        return str(doc["log"]) if isinstance(doc, dict) and "log" in doc else None
    except (OSError, ValueError):
        return None


def _source(log: Path | None, key: Path | None, keys_dir: Path | None, hub_dir: Path | None,
            node_dir: Path | None, state_dir: Path | None, run: Path | None
            ) -> tuple[Path, dict[str, Any], str]:
    """(log file, actor -> public key, where the key came from) for the options given."""
    from fedcare.governance.audit_log import load_public_key

    chosen = [o for o in ("--log", "--hub-dir", "--node-dir", "--run")
              if {"--log": log, "--hub-dir": hub_dir, "--node-dir": node_dir,
                  "--run": run}[o] is not None]
    if len(chosen) != 1:
        raise typer.BadParameter("give exactly one of --log, --hub-dir, --node-dir, --run"
                                 + (f" (got {', '.join(chosen)})" if chosen else ""))
    if state_dir is not None and node_dir is None:
        raise typer.BadParameter("--state-dir goes with --node-dir")
    if hub_dir is not None:
        from fedcare.hub.audit import hub_log_and_keys

        path, keys = hub_log_and_keys(hub_dir)
        origin = "the hub's public key beside its log"
    elif node_dir is not None:
        from fedcare.node.audit import node_log_and_keys

        path, keys = node_log_and_keys(node_dir, state_dir)
        origin = "the site's certificate (site.crt)"
    elif run is not None:
        from fedcare.sim.audit import run_log_and_keys

        path, keys = run_log_and_keys(run)
        origin = "the run's own key (simulation: proves integrity of the file, not identity)"
    else:
        assert log is not None
        path, keys, origin = log, {}, ""
    if not path.is_file():
        raise FedcareError(f"audit log {path} does not exist")
    if keys_dir is not None:
        keys = _keys_dir(keys_dir)
        origin = f"keys in {keys_dir}"
    if key is not None:
        name = _log_name(path) or "hub"
        keys = {name: load_public_key(key)}
        origin = f"{key}"
    if not keys:
        raise typer.BadParameter("--log needs --key or --keys-dir (the actor's public key)")
    return path, keys, origin


def _anchor(text: str | None) -> Any:
    """``SEQ:HASH`` (a head noted elsewhere) or a signed head JSON file."""
    if text is None:
        return None
    import json
    import re

    from fedcare.governance.audit_log import Head, SignedHead

    m = re.fullmatch(r"(\d+):([0-9a-f]{64})", text.strip())
    if m:
        return Head(int(m[1]), m[2])
    path = Path(text)
    if not path.is_file():
        raise typer.BadParameter(f"--anchor {text!r} is neither SEQ:HASH (64 hex) nor a file")
    try:
        return SignedHead.from_json(json.loads(path.read_text()))
    except ValueError as exc:
        raise typer.BadParameter(f"--anchor {path}: not JSON ({exc})") from None


def _when(text: str | None, name: str) -> Any:
    if text is None:
        return None
    import datetime as dt

    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise typer.BadParameter(f"{name} {text!r} is not an ISO 8601 date or time") from None
    return when if when.tzinfo is not None else when.replace(tzinfo=dt.UTC)


@app.command()
def verify(
    log: LogOption = None, key: KeyOption = None, keys_dir: KeysDirOption = None,
    anchor: Annotated[str | None, typer.Option(
        help="The log's head noted elsewhere, SEQ:HASH, or a signed head JSON file: catches a "
             "cut tail.")] = None,
    hub_dir: HubDirOption = None, node_dir: NodeDirOption = None,
    state_dir: StateDirOption = None, run: RunOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the verdict as JSON.")] = False,
) -> None:
    """Check a signed audit log: every line's form, the hash chain and every signature.
    Exit 0 when it verifies; 1 naming the first bad entry (seq, line, why); 2 on bad options."""
    from fedcare.governance.audit_log import verify as verify_log

    try:
        path, keys, origin = _source(log, key, keys_dir, hub_dir, node_dir, state_dir, run)
        verdict = verify_log(path, keys, anchor=_anchor(anchor))
    except FedcareError as exc:
        raise fail(exc, 2) from None
    if as_json:
        import json

        print(json.dumps({"file": str(path), **verdict.to_json()}))
    else:
        console.print(verdict_line(path, verdict, origin), soft_wrap=True)
    if not verdict.ok:
        raise typer.Exit(1)


def verdict_line(path: Path, verdict: Any, origin: str = "") -> str:
    """One line (rich markup) for a :class:`Verdict`."""
    keyed = f" (keys: {escape(origin)})" if origin else ""
    if verdict.ok:
        return (f"[green]OK[/green] {escape(str(path))}: log {escape(str(verdict.log))}, "
                f"{verdict.entries} entries, chain and signatures verify; head seq "
                f"{verdict.head.seq} {verdict.head.hash[:16]}...{keyed}")
    return (f"[bold red]FAILED[/bold red] {escape(str(path))}: {escape(str(verdict.problem))}"
            f" ({verdict.entries} entries verified before it){keyed}")


@app.command()
def export(
    out: Annotated[Path, typer.Option("--out", help="The export to write (JSON Lines).")],
    log: LogOption = None, key: KeyOption = None, keys_dir: KeysDirOption = None,
    since: Annotated[str | None, typer.Option(help="Entries at or after (ISO 8601; UTC if no "
                                                   "zone).")] = None,
    until: Annotated[str | None, typer.Option(help="Entries before (ISO 8601).")] = None,
    anchor: Annotated[str | None, typer.Option(help="As for verify.")] = None,
    hub_dir: HubDirOption = None, node_dir: NodeDirOption = None,
    state_dir: StateDirOption = None, run: RunOption = None,
) -> None:
    """Write a log's entries (``--since``/``--until``) for a regulator: a header with the
    log's verdict, then each entry's line exactly as stored. Exit 1 when the log does not
    verify (the export, holding the entries before the first problem, is written anyway)."""
    from fedcare.governance.audit_log import export as export_log

    try:
        path, keys, origin = _source(log, key, keys_dir, hub_dir, node_dir, state_dir, run)
        start, end = _when(since, "--since"), _when(until, "--until")
        verdict = export_log(path, out, keys, since=start, until=end, anchor=_anchor(anchor))
    except FedcareError as exc:
        raise fail(exc, 2) from None
    console.print(verdict_line(path, verdict, origin), soft_wrap=True)
    console.print(f"Wrote [bold]{escape(str(out))}[/bold]")
    if not verdict.ok:
        raise typer.Exit(1)


@app.command()
def fetch(
    out: Annotated[Path, typer.Option("--out", help="Folder to save the hub's log and key "
                                                    "in (created if missing).")],
    federation: Annotated[Path | None, typer.Option(
        envvar="FEDCARE_FEDERATION", help="Your user folder (or the coordinator's federation "
        "folder, whose admin/ is then used): the hub URL, the CA and your token file.")] = None,
    hub: Annotated[str | None, typer.Option("--hub", help="Hub URL (without "
                                                          "--federation).")] = None,
    ca: Annotated[Path | None, typer.Option(help="Federation CA certificate.")] = None,
    token_file: Annotated[Path | None, typer.Option(
        "--token-file", help="File holding your (admin or auditor) token; default: the "
        "environment variable FEDCARE_TOKEN. Never the token itself.")] = None,
) -> None:
    """Save the hub's signed audit log and public key over HTTPS (admin or auditor), and
    verify them. Exit 0 when the log verifies, 1 naming the first bad entry, 2 when the hub
    cannot be asked. Compare the key's fingerprint with one noted at the hub out of band:
    the key the hub serves proves the log unchanged since signing, not who signed it."""
    import hashlib

    from fedcare.client import HubClient
    from fedcare.core.files import atomic_write
    from fedcare.governance.audit_log import load_public_key
    from fedcare.governance.audit_log import verify as verify_log
    from fedcare.hub.audit import LOG_FILE, PUBLIC_FILE

    try:
        client = HubClient(federation, hub, ca, None, token_file, user_folder="admin")
        key = client.call("GET", "/v1/audit/key")
        log = client.call("GET", "/v1/audit/log")
        for name, r in (("key", key), ("log", log)):
            sent = r.headers.get("X-Key-SHA256" if name == "key" else "X-Content-SHA256")
            if sent != hashlib.sha256(r.content).hexdigest():
                raise FedcareError(f"the hub's audit {name} arrived damaged (its SHA-256 is "
                                   "not the one the hub named): fetch it again")
        out.mkdir(parents=True, exist_ok=True)
        key_path, log_path = out / PUBLIC_FILE, out / LOG_FILE
        atomic_write(key_path, key.content)
        atomic_write(log_path, log.content)
        verdict = verify_log(log_path, {"hub": load_public_key(key_path)})
    except (FedcareError, OSError) as exc:
        raise fail(exc, 2) from None
    console.print(f"Saved {escape(str(log_path))} and {escape(str(key_path))} (key SHA-256 "
                  f"{hashlib.sha256(key.content).hexdigest()})", soft_wrap=True)
    console.print(verdict_line(log_path, verdict, "the key the hub served"), soft_wrap=True)
    console.print(f"Later: fedcare audit verify --log {escape(str(log_path))} "
                  f"--key {escape(str(key_path))}", soft_wrap=True)
    if not verdict.ok:
        raise typer.Exit(1)
