"""The Celery side of the peers bench: one task = one `bash run.sh` job.

Runs only under the peers' own venv (bench/peers.py makes it), never under the project's.
Broker and result backend: the Redis that bench/peers.py starts, named by JOBENCH_REDIS_URL.
The task carries the script's text in its message and returns output.txt's content: Celery
stages no files and builds no archive, so it is a lower bound for a Python queue, not a
like-for-like peer.
"""

import os
import subprocess
import tempfile

from celery import Celery

app = Celery(
    "jobench", broker=os.environ["JOBENCH_REDIS_URL"], backend=os.environ["JOBENCH_REDIS_URL"]
)
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


@app.task(name="jobench.run_job")
def run_job(script: str) -> dict[str, object]:
    directory = tempfile.mkdtemp(prefix="celery-", dir=os.environ["JOBENCH_JOB_ROOT"])
    with open(os.path.join(directory, "run.sh"), "w") as handle:
        handle.write(script)
    returncode = subprocess.run(["bash", "run.sh"], cwd=directory).returncode
    with open(os.path.join(directory, "output.txt"), "rb") as handle:
        output = handle.read().decode()
    return {"output": output, "returncode": returncode}
