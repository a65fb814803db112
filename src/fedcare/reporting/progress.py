"""A live progress bar for a networked study, fed with the hub's status documents."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Protocol

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn


class _Round(Protocol):
    @property
    def sites_completed(self) -> Sequence[str]: ...
    @property
    def sites_failed(self) -> Mapping[str, str]: ...


class _Status(Protocol):
    """What the bar reads of a status (the hub's ``StudyStatus`` response; reporting sits
    below the hub's layer and names only the shape)."""

    @property
    def name(self) -> str: ...
    @property
    def rounds_planned(self) -> int: ...
    @property
    def current_round(self) -> int: ...
    @property
    def rounds(self) -> Sequence[_Round]: ...
    @property
    def status(self) -> str: ...
    def undecided(self) -> list[str]: ...


class StudyProgress:
    """``with StudyProgress(console) as bar: watch(client, id, on_status=bar)``."""

    def __init__(self, console: Console | None = None) -> None:
        self._progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                                  MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                                  console=console)
        self._task: TaskID | None = None

    def __enter__(self) -> StudyProgress:
        self._progress.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._progress.stop()

    def __call__(self, status: _Status) -> None:
        if self._task is None:
            self._task = self._progress.add_task(status.name, total=status.rounds_planned,
                                                 info="")
        info = ""
        if status.status == "pending_approval":
            info = f"pending approval by {', '.join(status.undecided())}"
        elif status.rounds:
            last = status.rounds[-1]
            failed = last.sites_failed
            info = f"{len(last.sites_completed)} sites answered" + (
                f", [red]{len(failed)} failed[/red]" if failed else "")
        self._progress.update(self._task, completed=status.current_round, info=info)
