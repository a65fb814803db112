"""Rich progress bars for simulation runs (one bar per phase: federated, baselines)."""

from __future__ import annotations

from types import TracebackType

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from fedcare.engine.history import RoundRecord


class RichProgress:
    def __init__(self) -> None:
        self._progress = Progress(
            TextColumn("[bold]{task.description:<22}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), TextColumn("{task.fields[info]}"), transient=False)
        self._tasks: dict[str, TaskID] = {}

    def __enter__(self) -> RichProgress:
        self._progress.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._progress.stop()

    def __call__(self, phase: str, done: int, total: int, record: RoundRecord | None) -> None:
        if phase not in self._tasks:
            self._tasks[phase] = self._progress.add_task(phase, total=total, info="")
        info = ""
        if record is not None:
            losses = [m["train_loss"] for m in record.train_metrics.values()
                      if "train_loss" in m]
            if losses:
                info = f"train loss {sum(losses) / len(losses):.4f}"
            if record.sites_failed:
                info += f"  [red]{len(record.sites_failed)} site(s) failed[/red]"
        self._progress.update(self._tasks[phase], completed=done, info=info)
