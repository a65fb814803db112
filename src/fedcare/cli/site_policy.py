"""``fedcare node policy init``: write a site's policy file with the strict default.

Thin over :mod:`fedcare.governance.site_policy`. The policy is the site's own (the hub and
the coordinator never set it): ``fedcare node init`` writes it into the new kit, and this
command writes it anywhere else (next to a site.toml that names it with ``[policy] file``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from fedcare.cli.errors import fail
from fedcare.cli.network import node_app
from fedcare.core.errors import ConfigError

console = Console()
policy_app = typer.Typer(help="The site's own policy: which studies it joins, what may leave.",
                         no_args_is_help=True)
node_app.add_typer(policy_app, name="policy")

HEADER = """\
This site's own policy (fedcare.governance.site_policy): which studies it joins and what
may leave it. It stays on this machine; the hub can never set or read it. Name it in the
node's site.toml:  [policy] file = "site_policy.toml"  (relative to site.toml).

Every value below is the STRICT default: a plain study (FedAvg, logreg, no [privacy], no
[secure_aggregation]) is refused by privacy.require_dp and secure_aggregation.required.
Loosen a rule only as far as your data governance allows; the node re-reads this file
when it changes. A key left out takes its strict default."""


def write_default_policy(path: Path, *, overwrite: bool = False) -> Path:
    """Write the strict default policy to ``path`` (refused if it exists, unless
    ``overwrite``)."""
    from fedcare.core.files import atomic_write
    from fedcare.governance.site_policy import default_policy, policy_toml

    if path.exists() and not overwrite:
        raise ConfigError(f"{path} exists; pass --overwrite to replace it with the strict "
                          "default", source=str(path))
    atomic_write(path, policy_toml(default_policy(), header=HEADER).encode())
    return path


@policy_app.command("init")
def policy_init(
    out: Annotated[Path, typer.Option(help="The policy file to write.")] = Path(
        "site_policy.toml"),
    overwrite: Annotated[bool, typer.Option(help="Replace an existing file.")] = False,
) -> None:
    """Write the strict default site policy (every key, each explained)."""
    try:
        write_default_policy(out, overwrite=overwrite)
    except (ConfigError, OSError) as exc:
        raise fail(exc, 2) from None
    console.print(f"Wrote the strict default site policy to [bold]{escape(str(out))}[/bold]; "
                  + escape(f'name it in site.toml: [policy] file = "{out.name}"'))


@policy_app.command("check")
def policy_check(
    file: Annotated[Path, typer.Argument(help="The site policy file to check.")],
) -> None:
    """Read a site policy file and say whether the node would accept it (exit 2 if not)."""
    from fedcare.governance.site_policy import load_policy

    try:
        load_policy(file)
    except ConfigError as exc:
        raise fail(exc, 2) from None
    console.print(f"[green]{escape(str(file))} is a valid site policy[/green]")
