"""Python SDK for job-orchestrator: submit jobs, wait for them, fetch results and logs.

```python
from job_orchestrator.sdk import Client, JobFailed

with Client("http://127.0.0.1:5000") as jo:        # or JO_SERVER / JO_TOKEN
    job = jo.submit("my-job/", service="example")  # a directory with run.sh, or files
    try:
        jo.wait(job.id, timeout=3600)
        jo.download(job.id, "result.zip")
    except JobFailed as failure:
        print(failure.status, failure.message)
```

`AsyncClient` has the same verbs as coroutines (`jobs()` and `logs()` as async iterators).
"""

from __future__ import annotations

from job_orchestrator.sdk._async import AsyncClient
from job_orchestrator.sdk._client import Client
from job_orchestrator.sdk._protocol import DEFAULT_SERVER
from job_orchestrator.sdk._upload import Progress
from job_orchestrator.sdk.errors import (
    AlreadyFinished,
    InvalidServer,
    InvalidSubmission,
    JobFailed,
    JobNotFound,
    JobOrchestratorError,
    NotFinished,
    ServerError,
    ServerUnreachable,
    Unauthorized,
    WaitTimeout,
)
from job_orchestrator.sdk.models import Job, QueueInfo, Status

__all__ = [
    "DEFAULT_SERVER",
    "AlreadyFinished",
    "AsyncClient",
    "Client",
    "InvalidServer",
    "InvalidSubmission",
    "Job",
    "JobFailed",
    "JobNotFound",
    "JobOrchestratorError",
    "NotFinished",
    "Progress",
    "QueueInfo",
    "ServerError",
    "ServerUnreachable",
    "Status",
    "Unauthorized",
    "WaitTimeout",
]
