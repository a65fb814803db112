"""``fedcare provision``: create and manage a federation's certificates (thin over the library).

Every error is a red message on stderr and exit code 2; the library guarantees nothing is
left half-written.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from fedcare.cli.errors import fail
from fedcare.core.errors import FedcareError

if TYPE_CHECKING:
    from fedcare.hub.provisioning import Federation, SiteRecord

app = typer.Typer(
    help="Create and manage a federation's certificates: the CA, the hub's TLS folder, the "
         "researcher's folder, and each site's certificate (signed from the site's request).",
    no_args_is_help=True, add_completion=False)
console = Console()

FederationDir = Annotated[Path, typer.Argument(help="The federation folder.")]
ValidDays = Annotated[int, typer.Option(help="Certificate validity in days.", min=1)]


def _short(text: str, keep: int = 16) -> str:
    return text if len(text) <= keep else text[:keep] + "…"


@app.command()
def new(
    directory: Annotated[Path, typer.Argument(help="Folder to create (must not exist or be "
                                                    "empty).")],
    hub_host: Annotated[str, typer.Option(help="DNS name or IP address sites use to reach the "
                                               "hub.")],
    hub_port: Annotated[int, typer.Option(help="The hub's HTTPS port.")] = 8443,
    valid_days: ValidDays = 365,
) -> None:
    """Create a federation: CA, hub folder and researcher folder (sites join with add-site)."""
    from fedcare.hub.provisioning import create_federation

    try:
        federation = create_federation(directory, hub_host=hub_host, hub_port=hub_port,
                                       valid_days=valid_days)
    except FedcareError as exc:
        raise fail(exc, 2) from None
    root = federation.root
    console.print(f"Created federation [bold]{federation.federation_id}[/bold] in "
                  f"[bold]{escape(str(root))}[/bold] (hub {escape(federation.hub.url)})")
    console.print(f"  [bold]{escape(str(federation.hub.dir))}[/bold]: copy to the hub machine")
    console.print(f"  [bold]{escape(str(root / 'researcher'))}[/bold]: give to the researcher "
                  "(hub URL, CA certificate, token; no private key)")
    console.print(f"  [bold]{escape(str(root / 'ca'))}[/bold]: the CA key; keep it offline and "
                  "backed up")
    console.print("Each site makes its own key: [bold]fedcare node init --site NAME --out "
                  "KIT[/bold], then sends you KIT/site.csr for [bold]fedcare provision add-site"
                  "[/bold].")


@app.command("add-site")
def add_site_command(
    directory: FederationDir,
    name: Annotated[str, typer.Argument(help="The new site's name (as in its request).")],
    csr: Annotated[Path, typer.Option(help="The site's certificate signing request (site.csr "
                                           "from `fedcare node init`).")],
    valid_days: ValidDays = 365,
) -> None:
    """Sign a site's certificate request; writes sites/NAME (no secret) to send back to it."""
    from fedcare.hub.provisioning import add_site

    try:
        try:
            request = csr.read_bytes()
        except OSError as exc:
            raise FedcareError(f"cannot read the request {csr}: {exc}") from exc
        record = add_site(directory, name, request, valid_days=valid_days)
    except FedcareError as exc:
        raise fail(exc, 2) from None
    console.print(f"Issued site [bold]{escape(record.name)}[/bold] (serial "
                  f"{_short(f'{record.serial:x}')}, expires {record.not_after:%Y-%m-%d}): send "
                  f"[bold]{escape(str(record.kit_dir))}[/bold] to the site (it holds no secret); "
                  "it installs it with [bold]fedcare node install-cert[/bold]")


@app.command()
def revoke(directory: FederationDir,
           name: Annotated[str, typer.Argument(help="The site to revoke.")],
           reason: Annotated[str, typer.Option(
               help="Why (kept in federation.toml; RFC 5280 names such as key-compromise or "
                    "superseded also go in the CRL).")] = "") -> None:
    """Revoke a site's certificate: re-sign hub/crl.pem (a running hub picks it up)."""
    from fedcare.hub.provisioning import revoke_site

    try:
        result = revoke_site(directory, name, reason=reason)
    except FedcareError as exc:
        raise fail(exc, 2) from None
    when = f"{result.revocation.revoked_at:%Y-%m-%d %H:%M} UTC"
    if result.newly_revoked:
        console.print(f"Revoked site [bold]{escape(name)}[/bold] (serial "
                      f"{_short(f'{result.revocation.serial:x}')}); copy hub/crl.pem to the hub "
                      "if it runs elsewhere")
    else:
        console.print(f"Site [bold]{escape(name)}[/bold] was already revoked on {when}; "
                      "nothing changed")


@app.command()
def users(directory: FederationDir) -> None:
    """Give a federation made before hub users its first users (an admin and the user
    `researcher`), replacing the shared researcher token."""
    from fedcare.hub.provisioning import bootstrap_users

    try:
        admin = bootstrap_users(directory)
    except FedcareError as exc:
        raise fail(exc, 2) from None
    console.print(f"Made the admin ({escape(str(admin))}) and a new researcher token "
                  f"({escape(str(directory / 'researcher' / 'researcher.token'))}: hand it to "
                  "the researcher again). Copy hub/users.bootstrap.json to the hub and delete "
                  "the hub's researcher.token there; the hub imports the users at its start.")


def _expiry(moment: datetime, now: datetime) -> str:
    text = f"{moment:%Y-%m-%d}"
    if moment < now:
        return f"[red]{text} (expired)[/red]"
    return f"[yellow]{text}[/yellow]" if moment < now + timedelta(days=30) else text


def _revoked(record: SiteRecord) -> str:
    if record.revocation is None:
        return "no"
    reason = f": {escape(record.revocation.reason)}" if record.revocation.reason else ""
    return f"[red]yes[/red] {record.revocation.revoked_at:%Y-%m-%d}{reason}"


def _table(federation: Federation) -> Table:
    now = datetime.now(UTC)
    table = Table(title=f"federation {federation.federation_id} — hub "
                        f"{escape(federation.hub.url)}")
    for column in ("site", "serial", "sha256 fingerprint", "expires", "revoked"):
        table.add_column(column, overflow="fold")
    for record in federation.sites:
        table.add_row(escape(record.name), f"{record.serial:x}", record.fingerprint,
                      _expiry(record.not_after, now), _revoked(record))
    return table


@app.command()
def show(directory: FederationDir) -> None:
    """List the federation's sites: serial, fingerprint, expiry, revocation."""
    from fedcare.hub.provisioning import load_federation

    try:
        federation = load_federation(directory)
    except FedcareError as exc:
        raise fail(exc, 2) from None
    Console().print(_table(federation))  # a fresh console honours COLUMNS at call time
    if not federation.sites:
        console.print("No sites yet: add one with [bold]fedcare provision add-site[/bold].")
