"""Runs the bench's jobs through a Galaxy Pulsar server and prints one JSON object.

Usage (under the peers' venv): pulsar_driver.py URL latency|throughput JOBS WARMUP POLL_S
    CONCURRENCY WORKDIR SCRIPT EXPECTED
Each job uses Pulsar's own client library, as `pulsar-run` does, with HTTP file staging:
submit_job() (set-up, PUT run.sh, launch `bash run.sh`), raw_check_complete() every POLL_S
until complete, finish_job() downloads output.txt over HTTP, then output.txt is read.
Throughput runs CONCURRENCY such job loops in threads (the client library is synchronous),
each thread with a client manager of its own: one manager shared by the threads lost outputs
(finish_job reported nothing failed, yet output.txt was never written).
"""

import concurrent.futures
import fnmatch
import json
import logging
import os
import sys
import tempfile
import threading
import time
import uuid

from pulsar.client.manager import build_client_manager
from pulsar.client.staging.down import finish_job
from pulsar.client.staging.models import ClientJobDescription, ClientOutputs, PulsarOutputs
from pulsar.client.staging.up import submit_job

logging.basicConfig(level=logging.WARNING)
_local = threading.local()
_managers = []
_managers_lock = threading.Lock()


def thread_manager():
    if not hasattr(_local, "manager"):
        _local.manager = build_client_manager()
        with _managers_lock:
            _managers.append(_local.manager)
    return _local.manager


def one_job(manager, url, poll_s, workdir, script, expected):
    started = time.perf_counter()
    directory = tempfile.mkdtemp(prefix="pulsar-", dir=workdir)
    with open(os.path.join(directory, "run.sh"), "w") as handle:
        handle.write(script)
    client = manager.get_client(
        {"url": url, "private_token": None, "default_file_action": "transfer"}, str(uuid.uuid4())
    )
    outputs = ClientOutputs(
        working_directory=directory, dynamic_outputs=[fnmatch.translate("output.txt")]
    )
    submit_job(
        client,
        ClientJobDescription(
            command_line="bash run.sh", working_directory=directory, client_outputs=outputs
        ),
    )
    while (status := client.raw_check_complete())["status"] not in ("complete", "cancelled"):
        time.sleep(poll_s)
    failed = finish_job(
        client=client,
        cleanup_job=False,
        job_completed_normally=True,
        client_outputs=outputs,
        pulsar_outputs=PulsarOutputs.from_status_response(status),
    )
    elapsed = time.perf_counter() - started
    try:
        with open(os.path.join(directory, "output.txt")) as handle:
            output = handle.read()
    except FileNotFoundError:
        raise SystemExit(f"output.txt missing: status={status!r} failed={failed!r}") from None
    if failed or output != expected:
        raise SystemExit(f"unexpected result: failed={failed!r} output={output!r}")
    return elapsed, client


def main():
    url, mode, jobs, warmup, poll_s, concurrency, workdir, script, expected = sys.argv[1:10]
    manager = build_client_manager()
    job = (manager, url, float(poll_s), workdir, script, expected)
    try:
        for _ in range(int(warmup)):
            one_job(*job)[1].clean()
        if mode == "latency":
            latencies = []
            for _ in range(int(jobs)):
                elapsed, client = one_job(*job)
                client.clean()  # off the clock: our server also keeps files until retention
                latencies.append(elapsed)
            print(json.dumps({"latencies_s": latencies}))
            return
        started = time.perf_counter()
        threaded = (url, float(poll_s), workdir, script, expected)
        with concurrent.futures.ThreadPoolExecutor(int(concurrency)) as pool:
            done = list(pool.map(lambda _: one_job(thread_manager(), *threaded), range(int(jobs))))
        elapsed = time.perf_counter() - started
        for _, client in done:
            client.clean()
        print(json.dumps({"elapsed_s": elapsed}))
    finally:
        manager.shutdown()
        for other in _managers:
            other.shutdown()


if __name__ == "__main__":
    main()
