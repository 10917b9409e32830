"""What the SDK raises; every error is a `JobOrchestratorError`.

Hierarchy::

    JobOrchestratorError
    ├── ServerUnreachable       no connection, a timeout, or a connection dropped mid-answer
    ├── Unauthorized            401 or 403: no, a wrong, or another user's token
    ├── JobNotFound             404 for the job id (someone else's job looks the same)
    ├── JobFailed               the job ended Failed, Invalid, Killed, Cleaned or Unknown
    ├── AlreadyFinished         cancel() of a job that had already ended
    ├── NotFinished             download() of a job still queued or running
    ├── WaitTimeout             wait(timeout=...) ran out (also a TimeoutError)
    ├── InvalidSubmission       refused before anything is sent (also a ValueError)
    ├── InvalidServer           the server URL is not an http(s) URL (also a ValueError)
    └── ServerError             any other refusal or failure the server answered with
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from job_orchestrator.sdk.models import Job
    from job_orchestrator.status import Status

__all__ = [
    "AlreadyFinished",
    "InvalidServer",
    "InvalidSubmission",
    "JobFailed",
    "JobNotFound",
    "JobOrchestratorError",
    "NotFinished",
    "ServerError",
    "ServerUnreachable",
    "Unauthorized",
    "WaitTimeout",
]


class JobOrchestratorError(Exception):
    """Base of every SDK error; str(e) is one line meant for the user."""


class ServerUnreachable(JobOrchestratorError):
    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"server {url} unreachable: {reason}")
        self.url = url
        self.reason = reason


class Unauthorized(JobOrchestratorError):
    def __init__(self, message: str, status_code: int) -> None:
        super().__init__(message)
        self.status_code = status_code


class JobNotFound(JobOrchestratorError):
    def __init__(self, job_id: int) -> None:
        super().__init__(f"job {job_id} not found")
        self.job_id = job_id


class _JobError(JobOrchestratorError):
    """An error about a job in a given state, which it carries."""

    def __init__(self, job: Job, text: str) -> None:
        super().__init__(text)
        self.job = job

    @property
    def status(self) -> Status:
        return self.job.status

    @property
    def message(self) -> str:
        """The server's message for the job (the reason of a failure)."""
        return self.job.message


class JobFailed(_JobError):
    def __init__(self, job: Job) -> None:
        reason = f": {job.message}" if job.message else ""
        super().__init__(job, f"job {job.id} {job.status.wire}{reason}")


class AlreadyFinished(_JobError):
    def __init__(self, job: Job) -> None:
        super().__init__(job, f"job {job.id} already finished with status {job.status.wire}")


class NotFinished(_JobError):
    def __init__(self, job: Job) -> None:
        super().__init__(job, f"job {job.id} is {job.status.wire}; its result is not ready yet")


class WaitTimeout(_JobError, TimeoutError):
    def __init__(self, job: Job, timeout_s: float) -> None:
        super().__init__(job, f"job {job.id} still {job.status.wire} after {timeout_s:g} s")
        self.timeout_s = timeout_s


class InvalidSubmission(JobOrchestratorError, ValueError):
    """The files given to submit() cannot make a job (no run.sh, unreadable, clashing names)."""


class InvalidServer(JobOrchestratorError, ValueError):
    def __init__(self, url: str) -> None:
        super().__init__(f"invalid server URL {url!r}: expected http://HOST[:PORT] or https://...")
        self.url = url


class ServerError(JobOrchestratorError):
    def __init__(self, message: str, status_code: int) -> None:
        super().__init__(f"{message} (HTTP {status_code})" if message else f"HTTP {status_code}")
        self.message = message
        self.status_code = status_code
