"""``fedcare node init`` and ``fedcare node install-cert``: a site makes its own key.

Thin over :mod:`fedcare.pki.kit`. Every error is a red message on stderr and exit code 2.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from fedcare.cli.errors import fail
from fedcare.cli.network import node_app
from fedcare.core.errors import FedcareError

console = Console()


@node_app.command("init")
def node_init(
    site: Annotated[str, typer.Option(help="This site's name in the federation.")],
    out: Annotated[Path, typer.Option(help="The kit folder to create (must not exist or be "
                                           "empty).")],
) -> None:
    """Make this site's private key (it never leaves KIT), a certificate request and the
    site's policy file with the strict default (KIT/site_policy.toml)."""
    from fedcare.cli.site_policy import write_default_policy
    from fedcare.pki.kit import init_site_kit

    try:
        csr = init_site_kit(out, site)
        policy = write_default_policy(out / "site_policy.toml")
    except FedcareError as exc:
        raise fail(exc, 2) from None
    console.print(f"Made the key of site [bold]{escape(site)}[/bold] in "
                  f"[bold]{escape(str(out))}[/bold] (owner-only). Send "
                  f"[bold]{escape(str(csr))}[/bold] (public) to the federation's coordinator "
                  "for `fedcare provision add-site`, then run `fedcare node install-cert` with "
                  "the folder you get back.")
    console.print(f"The site's own policy, strict by default, is [bold]{escape(str(policy))}"
                  "[/bold]: review it and name it in your site.toml "
                  + escape("([policy] file = ...)."))


@node_app.command("install-cert")
def node_install_cert(
    kit: Annotated[Path, typer.Option(help="The kit folder made by `fedcare node init`.")],
    issued: Annotated[Path, typer.Option(
        "--from", help="The folder the coordinator sent back (site.crt, ca.crt, node.toml).")],
) -> None:
    """Check the coordinator's certificate against this kit's key and install it."""
    from fedcare.pki.kit import install_site_certificate

    try:
        config = install_site_certificate(kit, issued)
    except FedcareError as exc:
        raise fail(exc, 2) from None
    console.print(f"Installed the certificate of site [bold]{escape(config.site)}[/bold] "
                  f"(federation {config.federation_id}, hub {escape(config.hub_url)}); start "
                  f"the node with `fedcare node start --kit {escape(str(kit))} --data ...`")
