"""Live progress of a run (rich): one bar per round, then the audits; light to import."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from protos import admin_pb2


class RoundProgress:
    """One rich progress bar per round: sites reported out of sites selected."""

    def __init__(self, console: Console, rounds: int) -> None:
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total} sites"),
            TextColumn("{task.fields[note]}"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        self.rounds = rounds
        self.tasks: dict[int, TaskID] = {}

    def __enter__(self) -> RoundProgress:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(None, None, None)

    def update(self, run: admin_pb2.RunInfo) -> None:
        for info in run.round_infos:
            if info.number not in self.tasks:
                self.tasks[info.number] = self.progress.add_task(
                    f"round {info.number}/{self.rounds}", total=max(info.selected, 1), note=""
                )
            note = ""
            if info.state == "closed" and "eval_accuracy" in info.metrics:
                note = f"global model acc {info.metrics['eval_accuracy']:.3f} (sites' holdout)"
            self.progress.update(
                self.tasks[info.number],
                total=max(info.selected, 1),
                completed=info.submitted,
                note=note,
            )
        if run.site_results:
            # The audit phase: a run completes once each site's audit is in (or given up).
            settled = sum(1 for r in run.site_results if r.audit != "waiting")
            if -1 not in self.tasks:
                self.tasks[-1] = self.progress.add_task(
                    "audits", total=len(run.site_results), note=""
                )
            self.progress.update(
                self.tasks[-1],
                total=len(run.site_results),
                completed=settled,
                note=", ".join(f"{r.site_name} {r.audit}" for r in run.site_results),
            )
