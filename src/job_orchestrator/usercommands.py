"""The user commands themselves: each one SDK call, its answer printed (usercli parses and
maps errors to exit statuses).

Every string the server sends (a job's message, an error, the queue's detail) may hold what a
job put there, so it is printed with its control characters made visible (`\x1b`): no
terminal escape sequence from a job reaches the user's terminal. `logs` prints run.sh's output
as it is when stdout is not a terminal (a file keeps the log's bytes), and cleaned on one.

A command that returns has succeeded; any failure is an exception (an SDK error, OSError).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from job_orchestrator.sdk import Client, Job, Progress
from job_orchestrator.userwait import WaitDisplay, wait_showing

__all__ = ["COMMANDS", "printable"]

#: C0 controls but tab and newline, DEL and C1 controls, and the bidirectional overrides
#: (which can make a line read as something else).
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
#: In a log on a terminal, carriage returns and backspaces (progress bars) are kept too.
_LOG_CONTROL = re.compile("[\x00-\x07\x0b\x0c\x0e-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def printable(text: str, pattern: re.Pattern[str] = _CONTROL) -> str:
    """`text` with its control characters shown as escapes (`\x1b`), not sent to the terminal."""
    return pattern.sub(lambda found: ascii(found.group())[1:-1], text)


def _show(text: str) -> None:
    print(printable(text))


# ---- the commands ---------------------------------------------------------------------------


def _submit(client: Client, arguments: argparse.Namespace) -> None:
    with _progress("upload") as progress:
        job = client.submit(
            arguments.paths,
            arguments.service,
            arguments.user_id,
            callback_url=arguments.callback_url,
            progress=progress,
        )
    print(f"submitted job {job.id}")
    if not (arguments.wait or arguments.output):
        return
    _wait_and_report(client, job.id, None)
    if arguments.output:
        _save(client, job.id, arguments.output, partial=False)


def _status(client: Client, arguments: argparse.Namespace) -> None:
    job = client.status(arguments.job_id)
    if arguments.json:
        print(json.dumps(job.to_dict()))
    else:
        _show("\n".join(_describe(job)))


def _wait(client: Client, arguments: argparse.Namespace) -> None:
    _wait_and_report(client, arguments.job_id, arguments.timeout)


def _download(client: Client, arguments: argparse.Namespace) -> None:
    _save(client, arguments.job_id, arguments.output or Path.cwd(), partial=arguments.partial)


def _cancel(client: Client, arguments: argparse.Namespace) -> None:
    job = client.cancel(arguments.job_id)
    _show(f"job {job.id} {job.status.wire}" + (f": {job.message}" if job.message else ""))


def _list(client: Client, arguments: argparse.Namespace) -> None:
    found = client.jobs(
        user_id=arguments.user_id,
        status=arguments.status,
        service=arguments.service,
        page_size=min(arguments.limit or 500, 500),
    )
    jobs = _take(found, arguments.limit)
    if arguments.json:
        print(json.dumps([job.to_dict() for job in jobs]))
        return
    rows = [("ID", "STATUS", "SERVICE", "USER", "CREATED", "MESSAGE")]
    rows += [
        (
            str(job.id),
            job.status.wire,
            printable(job.service or ""),
            "" if job.user_id is None else str(job.user_id),
            _time(job.created_at),
            printable(job.message.splitlines()[0] if job.message else ""),
        )
        for job in jobs
    ]
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    for row in rows:
        _show(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )


def _logs(client: Client, arguments: argparse.Namespace) -> None:
    on_terminal = sys.stdout.isatty()
    for text in client.logs(arguments.job_id, follow=arguments.follow):
        sys.stdout.write(printable(text, _LOG_CONTROL) if on_terminal else text)
        sys.stdout.flush()


COMMANDS: dict[str, Callable[[Client, argparse.Namespace], None]] = {
    "submit": _submit,
    "status": _status,
    "wait": _wait,
    "download": _download,
    "cancel": _cancel,
    "list": _list,
    "logs": _logs,
}


# ---- helpers --------------------------------------------------------------------------------


def _wait_and_report(client: Client, job_id: int, timeout_s: float | None) -> None:
    """Wait, showing the job's progress on stderr; print the final status of a Completed job
    (the SDK raises for the others)."""
    job = wait_showing(client, job_id, timeout_s, WaitDisplay(sys.stderr, printable))
    _show(f"job {job.id} {job.status.wire}" + (f": {job.message}" if job.message else ""))


def _save(client: Client, job_id: int, dest: Path, *, partial: bool) -> None:
    with _progress("download") as progress:
        if partial:
            saved = client.download_partial(job_id, dest, progress=progress)
        else:
            saved = client.download(job_id, dest, progress=progress)
    print(f"saved {saved} ({saved.stat().st_size} bytes)")


def _take(jobs: Iterator[Job], limit: int) -> list[Job]:
    taken = []
    for job in jobs:
        taken.append(job)
        if limit and len(taken) >= limit:
            break
    return taken


def _time(value: datetime | None) -> str:
    """In this machine's time zone, named: `2026-12-01 15:00:00 CET` (the server sends UTC)."""
    return "" if value is None else value.astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")


def _describe(job: Job) -> list[str]:
    lines = [f"job {job.id}: {job.status.wire}"]
    if job.message:
        lines.append(f"  message:   {job.message}")
    details: list[tuple[str, object]] = [
        ("service", job.service),
        ("user", job.user_id),
        ("created", job.created_at and _time(job.created_at)),
        ("started", job.started_at and _time(job.started_at)),
        ("finished", job.finished_at and _time(job.finished_at)),
        ("client", job.client),
        ("exit code", job.exit_code),
    ]
    lines += [f"  {label + ':':<10} {value}" for label, value in details if value is not None]
    if job.queue is not None:
        where = f"position {job.queue.position}, " if job.queue.position else ""
        detail = f" ({job.queue.detail})" if job.queue.detail else ""
        lines.append(f"  {'queue:':<10} {where}{job.queue.reason}{detail}")
    return lines


@contextmanager
def _progress(verb: str) -> Iterator[Progress | None]:
    """A rich progress bar on stderr when both streams are terminals; nothing otherwise."""
    if not (sys.stdout.isatty() and sys.stderr.isatty()):
        yield None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )
    from rich.progress import Progress as Bars

    with Bars(
        TextColumn(verb),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as bars:
        task = bars.add_task(verb, total=None)

        def advance(done: int, total: int | None) -> None:
            bars.update(task, completed=done, total=total)

        yield advance
