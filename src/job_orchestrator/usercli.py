"""`job-orchestrator submit | status | wait | download | cancel | list | logs`: the user CLI.

A thin layer over `job_orchestrator.sdk`: each command is one SDK call, and each SDK error
maps to one exit status (see EXIT_* and docs/cli-sdk.md) with a one-line reason on stderr.

Every string the server sends (a job's message, an error, the queue's detail) may hold what a
job put there, so it is printed with its control characters made visible (`\x1b`): no
terminal escape sequence from a job reaches the user's terminal. `logs` prints run.sh's output
as it is when stdout is not a terminal (a file keeps the log's bytes), and cleaned on one.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from job_orchestrator.sdk import (
    DEFAULT_SERVER,
    Client,
    InvalidServer,
    InvalidSubmission,
    Job,
    JobNotFound,
    JobOrchestratorError,
    NotFinished,
    Progress,
    ServerError,
    ServerUnreachable,
    Status,
    WaitTimeout,
)
from job_orchestrator.userwait import WaitDisplay, wait_showing

__all__ = ["USER_COMMANDS", "add_user_commands", "run_user_command"]

EXIT_OK = 0
#: The job failed, was invalid, killed or cleaned; the server refused the request; or the
#: result could not be written.
EXIT_FAILED = 1
#: Bad arguments (a server URL that is not http(s)), or files that cannot make a job
#: (checked before anything is sent).
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_UNKNOWN_JOB = 4
#: The job has not finished: `wait --timeout` ran out, or `download` of a running job.
EXIT_NOT_FINISHED = 5
EXIT_INTERRUPTED = 130

USER_COMMANDS = ("submit", "status", "wait", "download", "cancel", "list", "logs")
_LIST_DEFAULT_LIMIT = 50
#: C0 controls but tab and newline, DEL and C1 controls, and the bidirectional overrides
#: (which can make a line read as something else).
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
#: In a log on a terminal, carriage returns and backspaces (progress bars) are kept too.
_LOG_CONTROL = re.compile("[\x00-\x07\x0b\x0c\x0e-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def printable(text: str, pattern: re.Pattern[str] = _CONTROL) -> str:
    """`text` with its control characters shown as escapes (`\x1b`), not sent to the terminal."""
    return pattern.sub(lambda found: ascii(found.group())[1:-1], text)


def _connection_options() -> argparse.ArgumentParser:
    shared = argparse.ArgumentParser(add_help=False)
    shared.add_argument(
        "--server",
        metavar="URL",
        help=f"the server's URL (default: JO_SERVER, else {DEFAULT_SERVER})",
    )
    shared.add_argument(
        "--token",
        help="API token or JWT, sent as a bearer token (default: JO_TOKEN, else none)",
    )
    return shared


def _job_id(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"invalid job id {text!r}: expected a number")
    return int(text)


def _count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"invalid count {text!r}: expected 0 or more")
    return int(text)


def _status_name(text: str) -> str:
    """A status name in any case (`failed`), as the server spells it (`Failed`)."""
    return Status.from_db(text).wire if text.lower() in _STATUS_NAMES else text


_STATUS_NAMES = frozenset(status.wire.lower() for status in Status)


def add_user_commands(commands: Any) -> None:
    """Add the user commands to the `job-orchestrator` subparsers."""
    shared = [_connection_options()]
    submit = commands.add_parser(
        "submit", parents=shared, help="Submit a job: a directory with run.sh, or files"
    )
    submit.add_argument("paths", nargs="+", metavar="DIR|FILE", help="the job's files")
    submit.add_argument("--service", required=True, help="the service to run it in")
    submit.add_argument(
        "--user-id",
        type=int,
        help="the submitting user (default: the token's user, else 0; a portal token needs it)",
    )
    submit.add_argument(
        "--callback-url", metavar="URL", help="the server POSTs the job's final status there"
    )
    submit.add_argument("--wait", action="store_true", help="wait until the job is final")
    submit.add_argument(
        "-o", "--output", metavar="FILE", type=Path, help="save the result ZIP (implies --wait)"
    )
    status = commands.add_parser("status", parents=shared, help="Show a job's status")
    status.add_argument("job_id", type=_job_id, metavar="ID")
    status.add_argument("--json", action="store_true", help="print the job as JSON")
    wait = commands.add_parser("wait", parents=shared, help="Wait until a job is final")
    wait.add_argument("job_id", type=_job_id, metavar="ID")
    wait.add_argument("--timeout", type=float, metavar="S", help="give up after S seconds")
    download = commands.add_parser("download", parents=shared, help="Save a job's result ZIP")
    download.add_argument("job_id", type=_job_id, metavar="ID")
    download.add_argument(
        "-o", "--output", metavar="FILE", type=Path, help="where to save it (job-ID.zip)"
    )
    download.add_argument(
        "--partial", action="store_true", help="the job's files as they are now, finished or not"
    )
    cancel = commands.add_parser("cancel", parents=shared, help="Cancel or kill a job")
    cancel.add_argument("job_id", type=_job_id, metavar="ID")
    listing = commands.add_parser("list", parents=shared, help="List jobs, newest first")
    listing.add_argument("--status", type=_status_name, choices=[status.wire for status in Status])
    listing.add_argument("--service")
    listing.add_argument("--user-id", type=int)
    listing.add_argument(
        "--limit",
        type=_count,
        default=_LIST_DEFAULT_LIMIT,
        help=f"at most this many jobs (default {_LIST_DEFAULT_LIMIT}; 0: all)",
    )
    listing.add_argument("--json", action="store_true", help="print a JSON array")
    logs = commands.add_parser("logs", parents=shared, help="Print run.sh's output")
    logs.add_argument("job_id", type=_job_id, metavar="ID")
    logs.add_argument(
        "-f", "--follow", action="store_true", help="keep printing until the job is final"
    )


def run_user_command(arguments: argparse.Namespace) -> int:
    command: Callable[[Client, argparse.Namespace], int] = _COMMANDS[arguments.command]
    try:
        with Client(arguments.server, arguments.token) as client:
            return command(client, arguments)
    except KeyboardInterrupt:
        _say("interrupted (a submitted job keeps running)")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return _closed_pipe()
    except JobOrchestratorError as error:
        _say(_with_hint(arguments, error))
        return _exit_status(error)
    except OSError as error:  # a result that cannot be written where it was asked to go
        _say(f"{error.filename or 'file'}: {error.strerror or error}")
        return EXIT_FAILED


def _closed_pipe() -> int:
    """The reader went away (`| head`): how a pipe ends, not an error; what is left to write
    (the interpreter's flush at exit too) goes nowhere instead of raising again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return EXIT_OK


def _with_hint(arguments: argparse.Namespace, error: JobOrchestratorError) -> str:
    """The error's text; for `Invalid service` (the original's answer), with the services of
    the server (`GET /services`, which the original has not: then the text alone)."""
    if not (isinstance(error, ServerError) and error.message == "Invalid service"):
        return str(error)
    try:
        with Client(arguments.server, arguments.token) as client:
            names = [str(service.get("name")) for service in client.services()]
    except JobOrchestratorError:
        return str(error)
    given = f"Invalid service {getattr(arguments, 'service', '')!r} (HTTP {error.status_code})"
    if not names:
        return f"{given}: this server has no service configured"
    return f"{given}; this server's services: {', '.join(names)}"


def _exit_status(error: JobOrchestratorError) -> int:
    if isinstance(error, InvalidSubmission | InvalidServer):
        return EXIT_USAGE
    if isinstance(error, ServerUnreachable):
        return EXIT_UNREACHABLE
    if isinstance(error, JobNotFound):
        return EXIT_UNKNOWN_JOB
    if isinstance(error, NotFinished | WaitTimeout):
        return EXIT_NOT_FINISHED
    return EXIT_FAILED  # JobFailed, AlreadyFinished, Unauthorized, ServerError, ...


def _say(text: str) -> None:
    print(f"job-orchestrator: {printable(text)}", file=sys.stderr)


def _show(text: str) -> None:
    print(printable(text))


# ---- the commands ---------------------------------------------------------------------------


def _submit(client: Client, arguments: argparse.Namespace) -> int:
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
        return EXIT_OK
    _wait_and_report(client, job.id, None)
    if arguments.output:
        _save(client, job.id, arguments.output, partial=False)
    return EXIT_OK


def _status(client: Client, arguments: argparse.Namespace) -> int:
    job = client.status(arguments.job_id)
    if arguments.json:
        print(json.dumps(job.to_dict()))
    else:
        _show("\n".join(_describe(job)))
    return EXIT_OK


def _wait(client: Client, arguments: argparse.Namespace) -> int:
    _wait_and_report(client, arguments.job_id, arguments.timeout)
    return EXIT_OK


def _download(client: Client, arguments: argparse.Namespace) -> int:
    _save(client, arguments.job_id, arguments.output or Path.cwd(), partial=arguments.partial)
    return EXIT_OK


def _cancel(client: Client, arguments: argparse.Namespace) -> int:
    job = client.cancel(arguments.job_id)
    _show(f"job {job.id} {job.status.wire}" + (f": {job.message}" if job.message else ""))
    return EXIT_OK


def _list(client: Client, arguments: argparse.Namespace) -> int:
    found = client.jobs(
        user_id=arguments.user_id,
        status=arguments.status,
        service=arguments.service,
        page_size=min(arguments.limit or 500, 500),
    )
    jobs = _take(found, arguments.limit)
    if arguments.json:
        print(json.dumps([job.to_dict() for job in jobs]))
        return EXIT_OK
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
    return EXIT_OK


def _logs(client: Client, arguments: argparse.Namespace) -> int:
    on_terminal = sys.stdout.isatty()
    for text in client.logs(arguments.job_id, follow=arguments.follow):
        sys.stdout.write(printable(text, _LOG_CONTROL) if on_terminal else text)
        sys.stdout.flush()
    return EXIT_OK


_COMMANDS: dict[str, Callable[[Client, argparse.Namespace], int]] = {
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
