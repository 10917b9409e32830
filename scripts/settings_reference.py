"""Render docs/settings.md from the settings table (src/job_orchestrator/settings_table.py).

The reference is never edited by hand: the names, defaults and one-line meanings are the
table's, which `--help-settings` prints too; NOTES adds the detail that does not fit on one
line, keyed by name (a note for an undeclared name fails the test). Run it after changing
the table:

    .venv/bin/python scripts/settings_reference.py      # rewrites docs/settings.md

tests/unit/test_docs.py fails while the committed page differs from what this renders, and
the site's build (scripts/mkdocs_hooks.py) renders the page from the table again.
"""

from __future__ import annotations

import sys
from pathlib import Path

from job_orchestrator.settings_table import SETTINGS, Setting

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "settings.md"

_SECTIONS = (
    ("both", "Common to server and client"),
    ("server", "Server only"),
    ("client", "Client only"),
)

#: What a setting's one-line meaning leaves out, in the docs' words (markdown, links relative
#: to docs/). Keys must be declared settings.
NOTES: dict[str, str] = {
    "HOST": "`./scripts/run-local` sets `127.0.0.1`. Anything beyond loopback without "
    "`API_TOKENS_FILE` (server) or `CLIENT_TOKEN` (client) is warned about on stderr at start "
    "([Security](security.md)).",
    "MAX_AGE": "10 days. On the client it counts from when the server collected the outcome "
    "(and keeps it at least 5 s); a result never collected is kept at least 6 h.",
    "UPLOAD_IDLE_TIMEOUT": "`/upload` on the server, `/submit` on the client; the body's files "
    "are removed.",
    "CLIENT_TOKEN": "See [Security](security.md).",
    "CLIENT_TOKEN_FILE": "So the token is in no process environment. Setting both, or a file "
    "that cannot be read or is empty, stops the program with exit status 2.",
    "LOG_FORMAT": "See [Monitoring](monitoring.md#logs).",
    "DB_PATH": "Created and migrated at start. PostgreSQL is required for "
    "[several replicas](replicas.md); TLS is chosen as SQLAlchemy takes it for asyncpg "
    "(`?ssl=require`, `?ssl=disable`) and applies to every connection a server opens.",
    "DB_PATH_FILE": "For a PostgreSQL URL with a password in it.",
    "SERVICE_<NAME>_UPLOAD_URL": "e.g. `http://client:9000/submit`.",
    "SERVICE_<NAME>_DOWNLOAD_URL": "e.g. `http://client:9000/retrieve`.",
    "SERVICE_<NAME>_TERMINATE_URL": "`.../kill`, derived from each download URL.",
    "SERVICE_<NAME>_CLIENTS": "The shorter form: `http://client:9000,...`.",
    "SERVICE_<NAME>_TIMEOUT": "Past it the job's process group is killed and it ends Failed.",
    "SERVICE_<NAME>_CLIENT_TOKEN": "Sent on every call to this service's clients.",
    "DISK_RESERVE_MB": "See [Disk space](security.md#disk-space).",
    "JOB_MAX_DISK_MB": "Checked by polling: a job may pass it by one interval's writes "
    "([Disk space](security.md#disk-space)).",
    "API_TOKENS_FILE": "See [Security](security.md#users); portal lines: "
    "[Portal tokens and JWTs](portals.md).",
    "JWT_PUBLIC_KEYS": "See [Portal tokens and JWTs](portals.md).",
    "ADMIN_USERS": "With `API_TOKENS_FILE` set and no `ADMIN_USERS`, nobody's tokens do "
    "([Monitoring](monitoring.md#status-page)).",
    "METRICS_TOKEN": "Else 401. User tokens never open it ([Monitoring](monitoring.md)).",
    "UPLOAD_MAX_CONCURRENT": "More are answered 503 with `Retry-After`.",
    "UPLOAD_MAX_PER_CLIENT": "Behind a proxy, the proxy's address. More: 503 with `Retry-After`.",
    "QUEUE_MAX_PER_USER": "The refusal is 429 with `Retry-After: 30` (`Too many queued jobs "
    "for user N (at most 1000, QUEUE_MAX_PER_USER); retry later`), counted with the new job's "
    "insert, in its transaction: uploads arriving together never pass the limit together, but "
    "on PostgreSQL two committing at the same instant on different connections (or replicas) "
    "can.",
    "LOG_KEEP_MAX_MB": "See [Live logs](api.md#live-logs).",
    "LOG_FOLLOW_MAX_PER_USER": "The job's owner. The 429 carries `Retry-After` "
    "([Held requests](api.md#held-requests-and-file-descriptors)).",
    "LOG_FOLLOW_MAX_TOTAL": "The 429 carries `Retry-After`.",
    "WAIT_MAX_PER_USER": "The 429 carries `Retry-After`.",
    "WAIT_MAX_TOTAL": "The 429 carries `Retry-After`.",
    "RETRY_DEADLINE": "6 h.",
    "STATUS_SETTLE": "For Prepared and Running; a job ending sooner is reported once, final. "
    "`0`: every change at once.",
    "POLL_INTERVAL": "The original's clients.",
    "FAILOVER_AFTER": "Also while the server has not asked about the job. Never less than the "
    "client's advertised `SERVER_LEASE` + 5 s: a lower setting is raised per client, with a "
    "warning ([Failure semantics](concepts/failure-semantics.md)).",
    "CALLBACK_SECRET": "Unset, a `callback_url` is refused with 400 "
    "([Callbacks](api.md#callbacks)).",
    "CALLBACK_ALLOW": "Comma-separated, e.g. `127.0.0.0/8,10.1.0.0/16`; `public` is every "
    "globally routable address. Checked against every address the host resolves to.",
    "CALLBACK_DEADLINE": "24 h, counted from the first attempt. `0`: one attempt.",
    "CALLBACK_TIMEOUT": "Name resolution, connection and answer.",
    "REPLICA_ID": "Must be unique and stable across restarts ([Replicas](replicas.md)).",
    "LEASE_S": "See [Replicas](replicas.md).",
    "MAX_CONCURRENT": "Advertised to the server, which prefers nodes with free capacity.",
    "REQUIRE_EXIT_TRAP": "The trap is `trap 'echo $? > .orchestrator.exit' EXIT`.",
    "RESULT_MAX_MB": "The sum of apparent file sizes, checked before compressing; beyond it "
    "the job fails at once with a clear message and a partial download answers 413.",
    "ADOPT_HOLD": "Waits for the server to ask for it.",
    "SERVER_LEASE": "`/retrieve` of its id. Advertised on `/health` "
    "(`X-Orchestrator-Server-Lease`); our server waits at least this + 5 s before it moves "
    "the client's jobs ([Failure semantics](concepts/failure-semantics.md)).",
    "EXECUTOR": "See [HPC / Slurm](slurm.md).",
    "SANDBOX": "`rlimits` needs `JOB_USERS` or `JOB_USER` (the client refuses to start "
    "without); `none` without them warns at start ([Security](security.md)).",
    "JOB_MAX_MEMORY_MB": "With `SANDBOX=rlimits` or `bwrap`.",
    "JOB_USERS": "Not with `EXECUTOR=slurm` ([Security](security.md#a-uid-per-job)).",
    "SLURM_PARTITION": "With `EXECUTOR=slurm`; also the partition `/load` reports on.",
    "SLURM_POLL_INTERVAL": "One `squeue` for all of this client's jobs, while it has jobs in "
    "Slurm.",
    "SLURM_EXTRA_ARGS": 'e.g. `--mem=4G --gres="gpu:1"`. One that does not parse stops the '
    "client with exit status 2.",
}


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _row(setting: Setting) -> str:
    meaning = setting.help
    if note := NOTES.get(setting.name):
        meaning = f"{meaning}. {note}"
    return f"| `{setting.name}` | {_cell(setting.default_text)} | {_cell(meaning)} |"


def render() -> str:
    """The page, from SETTINGS and NOTES."""
    lines = [
        "# Settings reference",
        "",
        "<!-- Generated by scripts/settings_reference.py from "
        "src/job_orchestrator/settings_table.py: do not edit. -->",
        "",
        "Server and client read only environment variables. The same list, from the program "
        "itself: `job-orchestrator server --help-settings` or `job-orchestrator client "
        "--help-settings` (they read no setting, so they work with a broken environment too). "
        "A bad value stops the program with one line naming the variable and exit status 2.",
        "",
        "`<NAME>` is a service name in any case and may contain `_` "
        "(`SERVICE_MY_APP_UPLOAD_URL` is service `my_app`); see "
        "[Server configuration](server.md#services).",
    ]
    for applies_to, title in _SECTIONS:
        lines += ["", f"## {title}", "", "| Variable | Default | Meaning |", "|---|---|---|"]
        lines += [_row(setting) for setting in SETTINGS if setting.applies_to == applies_to]
        if applies_to == "client":
            lines.append(
                "| `DB_PATH` | ignored | The client keeps its registry in memory and rebuilds "
                "it from `DATA_PATH` ([Client configuration](client.md#the-registry)). |"
            )
    return "\n".join(lines) + "\n"


def main() -> int:
    PAGE.write_text(render())
    print(f"wrote {PAGE.relative_to(ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
