"""A live progress bar for a networked study, fed with the hub's status documents."""

from __future__ import annotations

from types import TracebackType
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn


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

    def __call__(self, status: dict[str, Any]) -> None:
        if self._task is None:
            self._task = self._progress.add_task(status["name"],
                                                 total=status["rounds_planned"], info="")
        info = ""
        if status["rounds"]:
            last = status["rounds"][-1]
            failed = last.get("sites_failed") or {}
            info = f"{len(last.get('sites_completed', []))} sites answered" + (
                f", [red]{len(failed)} failed[/red]" if failed else "")
        self._progress.update(self._task, completed=status["current_round"], info=info)
