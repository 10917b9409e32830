"""Errors of job-orchestrator.

    JobOrchestratorError
    ├── ConfigError            a setting in the environment is invalid (exit status 2)
    ├── StoreError             the database failed
    │   └── StoreUnavailableError  it cannot be reached (down, restarting): retry later (503)
    ├── QueueFullError         the user has QUEUE_MAX_PER_USER jobs queued already (429)
    ├── LogOffsetError         a log was asked for from past its end (416)
    ├── IllegalMoveError       a status change the transition tables (status.py) do not
    │                          allow: a defect of the caller, never a lost race
    ├── ClientLeftError        a job's recorded client is no longer configured: the
    │                          server asks no client about the job any more
    └── ClientCallError        a server -> client HTTP call failed
        ├── TransientClientError   worth retrying: refused, timeout, 5xx
        │   ├── UndeliveredError   the request cannot have reached the client (refused,
        │   │                      DNS failure, connect timeout): safe to send elsewhere
        │   └── OutOfDescriptorsError  this server had no file descriptor left for the
        │                          call: its own trouble, never held against the client
        └── PermanentClientError   a definite answer: 4xx or an unreadable reply
            ├── PayloadLostError   the client answered 404 for a payload we gave it (or
            │                      409: the payload there belongs to another dispatch)
            ├── PartialTooLargeError   the files exceed the client's RESULT_MAX_MB (413)
            └── ClientUnauthorizedError   the client refused the server's token (401)

Multipart, archive and file-name errors live beside their code (multipart.py,
archive.py, filenames.py) because they carry user-facing messages of their own.
"""

from __future__ import annotations


class JobOrchestratorError(Exception):
    pass


class ConfigError(JobOrchestratorError):
    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable}: {problem}")
        self.variable = variable


class StoreError(JobOrchestratorError):
    pass


class StoreUnavailableError(StoreError):
    pass


class QueueFullError(JobOrchestratorError):
    """A new job refused: its user has as many jobs Queued as the limit allows."""


class LogOffsetError(JobOrchestratorError):
    """`?offset=` past the end of a log: answered 416 with `Content-Range: bytes */<size>`."""

    def __init__(self, size: int) -> None:
        super().__init__(f"the offset is past the end of the log ({size} bytes)")
        self.size = size


class IllegalMoveError(JobOrchestratorError):
    """A status change not in SERVER_MOVES / CLIENT_MOVES (status.py) was asked for."""


class ClientLeftError(JobOrchestratorError):
    pass


class ClientCallError(JobOrchestratorError):
    pass


class TransientClientError(ClientCallError):
    pass


class UndeliveredError(TransientClientError):
    pass


class OutOfDescriptorsError(TransientClientError):
    pass


class PermanentClientError(ClientCallError):
    pass


class PayloadLostError(PermanentClientError):
    pass


class PartialTooLargeError(PermanentClientError):
    pass


class ClientUnauthorizedError(PermanentClientError):
    """The client answered 401: CLIENT_TOKEN differs between it and the server."""

    #: What a job (and /status) says of it: the one wording.
    MESSAGE = "client refused the server's token (check CLIENT_TOKEN)"


class ClientDiskFullError(PermanentClientError):
    """Our client answered 507: its free space is below DISK_RESERVE_MB; it kept nothing."""

    #: What a job (and /status) says of it.
    MESSAGE = "the client's disk is full (free space below its DISK_RESERVE_MB)"
