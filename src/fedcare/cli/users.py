"""``fedcare users add|list|revoke``: the hub's people, managed by an admin over the hub's API
(thin over :class:`fedcare.client.HubClient`).

The caller's own credentials are used, as for every hub command: ``FEDCARE_TOKEN``,
``--token-file``, or the token file of ``--federation`` (the admin folder ``FED/admin`` that
provisioning made, or the coordinator's federation folder, whose ``admin/`` is then used).
A new user's token is shown once: written to a new owner-only file with ``--out``, else
printed with a warning; the hub keeps only its hash.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from fedcare.cli.errors import fail
from fedcare.cli.network import CaFile, Federation, HubUrl
from fedcare.client import HubClient
from fedcare.core.errors import ConfigError, FedcareError

app = typer.Typer(name="users", help="Add, list and revoke the hub's users (admins only).",
                  no_args_is_help=True, add_completion=False, rich_markup_mode="rich")
console = Console()

AdminTokenFile = Annotated[Path | None, typer.Option(
    "--token-file", help="File holding your (an admin's) token (default: the environment "
    "variable FEDCARE_TOKEN, else the token file of the --federation folder: FED/admin). "
    "Never a command-line argument: it would show in `ps` and shell history.")]


def _admin(federation: Path | None, hub: str | None, ca: Path | None,
           token_file: Path | None) -> HubClient:
    try:
        return HubClient(federation, hub, ca, None, token_file, user_folder="admin")
    except FedcareError as exc:
        raise fail(exc, 2) from None


@app.command("add")
def add(name: Annotated[str, typer.Argument(help="The new user's name (lower case).")],
        role: Annotated[str, typer.Option(
            "--role", help="admin, researcher, steward (with --site) or auditor.")],
        site: Annotated[str | None, typer.Option(
            "--site", help="The site a steward speaks for (stewards only).")] = None,
        out: Annotated[Path | None, typer.Option(
            "--out", help="Write the new token to this new file (owner-only, 0600) instead "
                          "of printing it.")] = None,
        federation: Federation = None, hub: HubUrl = None, ca: CaFile = None,
        token_file: AdminTokenFile = None) -> None:
    """Add a user; their token is shown once (hand it over privately)."""
    from fedcare.hub.users import check_user, parse_role

    try:
        check_user(name, parse_role(role), site)  # before anything is sent
        if out is not None and (out.exists() or out.is_symlink()):
            raise ConfigError(f"{out} exists; --out writes a new file only (a token is never "
                              "written over another file)")
    except FedcareError as exc:
        raise fail(exc, 2) from None
    client = _admin(federation, hub, ca, token_file)
    try:
        made = client.add_user(name, role, site)
    except FedcareError as exc:
        raise fail(exc, 1) from None
    where = f" for site {escape(made.site)}" if made.site else ""
    if out is not None:
        from fedcare.core.files import atomic_write

        atomic_write(out, made.token.encode(), mode=0o600)
        console.print(f"added {made.role} [bold]{escape(made.name)}[/bold]{where}; token "
                      f"written to {escape(str(out))} (0600): hand it over privately")
        return
    console.print(f"added {made.role} [bold]{escape(made.name)}[/bold]{where}")
    console.print("[yellow]their token, shown this once (the hub keeps only a hash); hand it "
                  "over privately and do not leave it in a terminal log:[/yellow]")
    typer.echo(made.token)


@app.command("list")
def list_users(federation: Federation = None, hub: HubUrl = None, ca: CaFile = None,
               token_file: AdminTokenFile = None) -> None:
    """The hub's users, their roles and sites, and who is revoked (never a token)."""
    client = _admin(federation, hub, ca, token_file)
    try:
        users = client.users()
    except FedcareError as exc:
        raise fail(exc, 1) from None
    table = Table("user", "role", "site", "created", "revoked")
    for u in users:
        table.add_row(escape(u.name), u.role, escape(u.site or ""), u.created[:19],
                      (u.revoked or "")[:19])
    console.print(table)


@app.command("revoke")
def revoke(name: Annotated[str, typer.Argument(help="The user to revoke.")],
           federation: Federation = None, hub: HubUrl = None, ca: CaFile = None,
           token_file: AdminTokenFile = None) -> None:
    """Revoke a user's token: the hub refuses it from the next request on (for good)."""
    client = _admin(federation, hub, ca, token_file)
    try:
        user = client.revoke_user(name)
    except FedcareError as exc:
        raise fail(exc, 1) from None
    console.print(f"revoked [bold]{escape(user.name)}[/bold] ({user.role}) at "
                  f"{(user.revoked or '')[:19]}")
