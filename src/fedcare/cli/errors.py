"""How every ``fedcare`` command reports a fedcare error: one red line, a meaningful exit code."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.markup import escape

from fedcare.core.errors import ConfigError, DataError

err_console = Console(stderr=True)


def fail(exc: Exception, code: int | None = None) -> typer.Exit:
    """Print ``exc`` for people and return the exit to raise.

    Default code: 2 when the user must fix a config or data, 1 when a run failed.
    """
    # soft_wrap: one line however long (rich would break it at the terminal's width, or at 80
    # columns in a log), so that it can be grepped and read whole.
    err_console.print(f"[bold red]error:[/bold red] {escape(str(exc))}", soft_wrap=True)
    if code is None:
        code = 2 if isinstance(exc, (ConfigError, DataError)) else 1
    return typer.Exit(code)
