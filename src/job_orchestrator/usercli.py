"""`job-orchestrator submit | status | wait | download | cancel | list | logs`: the user CLI.

A thin layer over `job_orchestrator.sdk`: each command is one SDK call, and each SDK error
maps to one exit status (see EXIT_* and docs/cli-sdk.md) with a one-line reason on stderr.
Here: the arguments and the exit statuses; the commands, and how what a job wrote is
printed safely, are in usercommands.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from job_orchestrator.sdk import (
    DEFAULT_SERVER,
    Client,
    InvalidServer,
    InvalidSubmission,
    JobNotFound,
    JobOrchestratorError,
    NotFinished,
    ServerError,
    ServerUnreachable,
    Status,
    WaitTimeout,
)
from job_orchestrator.usercommands import COMMANDS, printable

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
    command = COMMANDS[arguments.command]
    try:
        with Client(arguments.server, arguments.token) as client:
            command(client, arguments)
        return EXIT_OK
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
