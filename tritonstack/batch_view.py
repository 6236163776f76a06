"""What ``tritonstack batch`` shows: the progress (a rich bar on a terminal, a line every few
seconds in a log) and the summary of a run."""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from batch import Summary

SHOWN_PATHS = 50


class _RowsPerSecond(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.0f} rows/s" if speed else "- rows/s")


class BarProgress:
    """A rich bar on a terminal; a line every ``every_s`` seconds otherwise (logs, Kubernetes)."""

    def __init__(self, out: Console, every_s: float = 10.0) -> None:
        self.out = out
        self.every_s = every_s
        self.bar: Progress | None = None
        self.task: TaskID | None = None
        self.total = self.done = self.started_with = 0
        self.began = self.last = time.monotonic()

    def start(self, total: int, done: int) -> None:
        self.total, self.done, self.started_with = total, done, done
        self.began = self.last = time.monotonic()
        if self.out.is_terminal:
            self.bar = Progress(
                TextColumn("scoring"), BarColumn(), MofNCompleteColumn(), TextColumn("rows"),
                _RowsPerSecond(), TextColumn("ETA"), TimeRemainingColumn(), TimeElapsedColumn(),
                console=self.out,
            )  # fmt: skip
            self.bar.start()
            self.task = self.bar.add_task("rows", total=total, completed=done)
        elif done:
            self.out.print(f"resuming: {done:,} of {total:,} rows already scored")

    def advance(self, rows: int) -> None:
        self.done += rows
        if self.bar is not None and self.task is not None:
            self.bar.update(self.task, advance=rows)
            return
        now = time.monotonic()
        if now - self.last >= self.every_s:
            self.last = now
            rate = (self.done - self.started_with) / max(now - self.began, 1e-9)
            left = (self.total - self.done) / rate if rate else float("inf")
            eta = time.strftime("%H:%M:%S", time.gmtime(left)) if left < 86400 * 30 else "?"
            share = 100 * self.done / self.total if self.total else 100.0
            self.out.print(
                f"{self.done:,} / {self.total:,} rows ({share:.1f} %), {rate:,.0f} rows/s, "
                f"ETA {eta}"
            )

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def render_summary(out: Console, summary: Summary) -> None:
    facts = summary.facts
    table = Table(title="batch summary", show_header=False)
    versions = ", ".join(f"{m} v{v}" for m, v in summary.model_versions.items())
    codes = ", ".join(f"{c}: {n}" for c, n in summary.dead_letter_codes.items())
    rows = [
        ("model", f"{summary.model} ({versions})"),
        ("rows in", f"{summary.rows_in:,}"),
        ("rows out", f"{summary.rows_out:,}"),
        ("dead letters", f"{summary.dead_letters:,}" + (f" ({codes})" if codes else "")),
        ("check", f"{summary.rows_in:,} in = {summary.rows_out:,} out + {summary.dead_letters:,} "
                  "dead letters (counted in the files)"),
        ("shards", f"{summary.shards_finished} of {summary.shards} finished; this run "
                   f"{facts.shards_run}, {summary.shards_skipped} were already done"),
        ("time", f"{facts.seconds:.1f} s"),
        ("throughput", f"{summary.rows_per_s:,.1f} rows/s ({facts.rows_run:,} rows this run)"),
        ("requests", f"{facts.requests:,} (batch {facts.batch_size}, {facts.concurrency} in "
                     f"flight, shared memory {facts.shared_memory}, {facts.retries} retried)"),
    ]  # fmt: skip
    if facts.worker[1] > 1:
        rows.append(("worker", f"{facts.worker[0]} of {facts.worker[1]}"))
    rows.append(("complete", "yes" if summary.complete else "no: other workers' shards remain"))
    for name, value in rows:
        table.add_row(name, value)
    out.print(table)
    out.print(f"outputs ({len(summary.outputs)}):")
    for path in summary.outputs[:SHOWN_PATHS]:
        out.print(f"  {path}", highlight=False, soft_wrap=True)
    if len(summary.outputs) > SHOWN_PATHS:
        out.print(f"  ... {len(summary.outputs) - SHOWN_PATHS} more: every path is in summary.json")
