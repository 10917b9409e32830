"""`job-orchestrator server | client`: read the environment, then serve until SIGTERM/SIGINT.

The user commands (`submit`, `status`, ...) live in `usercli`; they only talk to a server.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from job_orchestrator import __version__
from job_orchestrator.usercli import USER_COMMANDS, add_user_commands, run_user_command


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="job-orchestrator",
        description="Fair job queue (server) and executor (client) for scientific web portals. "
        "Configured through environment variables; see docs/settings.md.",
    )
    parser.add_argument("--version", action="version", version=f"job-orchestrator {__version__}")
    commands = parser.add_subparsers(
        dest="command",
        metavar=f"{{server,client,migrate,{','.join(USER_COMMANDS)}}}",
        required=True,
    )
    for program, summary in (
        ("server", "Run orchestrator server (user API, queue, dispatch)"),
        ("client", "Run orchestrator client (executes run.sh payloads)"),
    ):
        command = commands.add_parser(program, help=summary)
        command.add_argument(
            "--help-settings",
            action="store_true",
            help=f"list the environment settings the {program} reads, with defaults, and exit",
        )
    commands.add_parser(
        "migrate", help="Bring the server's database (DB_PATH) to the current schema, then exit"
    )
    add_user_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    arguments = _parser().parse_args(argv)
    if arguments.command in USER_COMMANDS:
        return run_user_command(arguments)
    if getattr(arguments, "help_settings", False):
        from job_orchestrator.settings_table import SETTINGS, describe

        print(describe(SETTINGS, arguments.command), end="")
        return 0
    try:
        from job_orchestrator._serve import serve
    except ImportError as error:  # `pip install job-orchestrator` without the server extra
        print(
            f"job-orchestrator: the {arguments.command} needs the server extra "
            f"(missing: {error.name}); install it with: pip install 'job-orchestrator[server]'",
            file=sys.stderr,
        )
        return 2
    return serve(arguments.command)


if __name__ == "__main__":
    sys.exit(main())
