"""Real `job-orchestrator server` and `client` processes on free loopback ports.

Used by the acceptance and interop tests and by the benchmarks. Every process started here,
and every job process its clients start, carries a tag in its environment so teardown can
prove (and enforce) that nothing is left running.
"""

from __future__ import annotations

import contextlib
import io
import os
import random
import resource
import signal
import socket
import subprocess
import sys
import uuid
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import httpx
import psutil

from testkit.waiting import eventually

TAG_VARIABLE = "JOB_ORCHESTRATOR_TEST_TAG"
TRAP = "trap 'echo $? > .orchestrator.exit' EXIT\n"


#: Ports handed to test processes come from below the kernel's ephemeral range (32768 and
#: up here): a port the kernel picked with bind(0) may be taken by any outgoing connection
#: before the process that is to listen on it binds it (seen in a full run: "address already
#: in use"), while the kernel never hands out one of these on its own.
_TEST_PORTS = range(20000, 32768)
#: Ports this test process has handed out: never again until its share is used up, since the
#: process given one may not have bound it yet when the next is asked for.
_handed: set[int] = set()


def _worker_ports() -> range:
    """This pytest-xdist worker's own share of _TEST_PORTS (all of it without xdist).

    free_port's bind check cannot see a port another worker has just handed to a process
    that has not bound it yet. When two workers handed out the same port, one server failed
    to bind while its start-up health check was answered by the other worker's process, and
    the test then talked to that process (seen in CI: an upload answered with an empty 4xx).
    """
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if not worker.startswith("gw") or count < 2:
        return _TEST_PORTS
    share = len(_TEST_PORTS) // count
    start = _TEST_PORTS.start + int(worker[2:]) % count * share
    return range(start, start + share)


def free_port() -> int:
    """A loopback port nothing listens on now, outside the ephemeral range."""
    ports = _worker_ports()
    if len(_handed) >= len(ports) // 2:
        _handed.clear()  # the earliest were handed out long ago, to processes gone since
    for _ in range(200):
        port = random.choice(ports)
        if port in _handed:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed.add(port)
        return port
    with socket.socket() as sock:  # the range is crowded: let the kernel choose
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tagged_processes(tag: str) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if (
                process.environ().get(TAG_VARIABLE) == tag
                and process.pid != os.getpid()
                and process.status() != psutil.STATUS_ZOMBIE
            ):
                found.append(process)
    return found


def job_dir(root: Path, script: str, **files: str) -> Path:
    """A job directory as a user submits one: run.sh and its input files."""
    root.mkdir()
    (root / "run.sh").write_text(script)
    for name, content in files.items():
        (root / name).write_text(content)
    return root


@dataclass
class Node:
    """One running orchestrator process."""

    kind: str
    port: int
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    #: RLIMIT_NOFILE (soft, hard) to start the process with; None: inherit the test's.
    open_files: tuple[int, int] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "job_orchestrator", self.kind]

    def working_dir(self) -> Path | None:
        return None

    def start(self, wait: bool = True) -> Self:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            self.command(),
            env=self.env,
            cwd=self.working_dir(),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=self._set_limits if self.open_files else None,
        )
        log.close()
        if wait:
            self.wait_healthy()
        return self

    def _set_limits(self) -> None:
        # In the child, between fork and exec.
        assert self.open_files is not None
        resource.setrlimit(resource.RLIMIT_NOFILE, self.open_files)

    def wait_healthy(self, timeout_s: float = 30.0) -> None:
        def healthy() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.kind} exited early:\n{self.log()}")
            return httpx.get(f"{self.url}/health", timeout=1).status_code == 200

        try:
            eventually(healthy, f"{self.kind} /health", timeout_s, retry_on=(httpx.HTTPError,))
        except AssertionError as error:
            raise RuntimeError(f"{self.kind} did not become healthy:\n{self.log()}") from error

    def stop(self, signum: int = signal.SIGTERM, timeout_s: float = 20.0) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else None
        self.process.send_signal(signum)
        try:
            return self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@dataclass
class Cluster:
    """A server with one service (`example` by default) backed by one or more clients.

    More servers (`add_server`) are replicas of the first: same DB_PATH and DATA_PATH.
    """

    root: Path
    tag: str = field(default_factory=lambda: uuid.uuid4().hex)
    clients: list[Node] = field(default_factory=list)
    server: Node | None = None
    servers: list[Node] = field(default_factory=list)

    def base_env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith("SERVICE_") and key not in {"PORT", "DB_PATH", "DATA_PATH"}
        }
        env[TAG_VARIABLE] = self.tag
        env.setdefault("LOG_LEVEL", "INFO")
        env.update(extra or {})
        return env

    def add_client(self, env: Mapping[str, str] | None = None, start: bool = True) -> Node:
        index = len(self.clients)
        port = free_port()
        node = Node(
            "client",
            port,
            self.base_env(
                {
                    "PORT": str(port),
                    "HOST": "127.0.0.1",
                    "DATA_PATH": str(self.root / f"client{index}"),
                    "KILL_GRACE": "2",
                    **(env or {}),
                }
            ),
            self.root / f"client{index}.log",
        )
        self.clients.append(node)
        return node.start() if start else node

    def start_server(
        self, env: Mapping[str, str] | None = None, service: str = "example", start: bool = True
    ) -> Node:
        self.server = None
        self.servers = []
        return self.add_server(env, service, start)

    def add_server(
        self, env: Mapping[str, str] | None = None, service: str = "example", start: bool = True
    ) -> Node:
        """A server; after the first, a replica sharing its database and data directory."""
        port = free_port()
        urls = ",".join(client.url for client in self.clients)
        index = len(self.servers)
        node = Node(
            "server",
            port,
            self.base_env(
                {
                    "PORT": str(port),
                    "HOST": "127.0.0.1",
                    "DB_PATH": str(self.root / "server.db"),
                    "DATA_PATH": str(self.root / "server-data"),
                    f"SERVICE_{service.upper()}_CLIENTS": urls,
                    "POLL_INTERVAL": "0.2",
                    **(env or {}),
                }
            ),
            self.root / ("server.log" if index == 0 else f"server{index}.log"),
        )
        self.servers.append(node)
        if self.server is None:
            self.server = node
        return node.start() if start else node

    @property
    def api(self) -> Api:
        assert self.server is not None
        return Api(self.server.url)

    def shutdown(self) -> list[str]:
        """Stop everything; return the command lines of job processes that were still alive."""
        servers = self.servers or ([self.server] if self.server else [])
        for node in [*servers, *self.clients]:
            if node is not None:
                with contextlib.suppress(Exception):
                    node.stop()
        described = []
        for process in tagged_processes(self.tag):
            with contextlib.suppress(psutil.Error):
                described.append(f"{process.pid}: {' '.join(process.cmdline())}")
                process.kill()
        return described


@dataclass
class Api:
    base_url: str
    #: A user token (API_TOKENS_FILE) sent as `Authorization: Bearer <token>` when set.
    token: str | None = None

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def upload(
        self,
        files: Mapping[str, bytes | str],
        *,
        user_id: int | str | None = 1,
        service: str = "example",
    ) -> httpx.Response:
        """POST /upload; `user_id=None` leaves the field out (the token then says who)."""
        parts = [
            ("file", (name, content.encode() if isinstance(content, str) else content))
            for name, content in files.items()
        ]
        data: dict[str, Any] = {"service": service}
        if user_id is not None:
            data["user_id"] = str(user_id)
        return httpx.post(
            f"{self.base_url}/upload", files=parts, data=data, headers=self.headers, timeout=60
        )

    def submit(
        self,
        script: str,
        *,
        user_id: int | None = 1,
        extra: Mapping[str, bytes | str] | None = None,
    ) -> int:
        response = self.upload({"run.sh": script, **(extra or {})}, user_id=user_id)
        assert response.status_code == 201, response.text
        job_id = response.json()["id"]
        assert isinstance(job_id, int)
        return job_id

    def status(self, job_id: int) -> dict[str, Any]:
        response = httpx.get(f"{self.base_url}/download/{job_id}", headers=self.headers, timeout=30)
        if response.headers["content-type"] == "application/zip":
            return {"id": job_id, "status": "Completed", "message": ""}
        body: dict[str, Any] = response.json()
        return body

    def wait_for(self, job_id: int, *statuses: str, timeout_s: float = 60.0) -> dict[str, Any]:
        """The job's status body once its status is one of `statuses`."""
        last: dict[str, Any] = {}

        def reached() -> dict[str, Any] | None:
            nonlocal last
            last = self.status(job_id)
            return last if last["status"] in statuses else None

        return eventually(
            reached, f"job {job_id} to reach {statuses}", timeout_s, detail=lambda: last
        )

    def download_zip(self, job_id: int) -> zipfile.ZipFile:
        response = httpx.get(f"{self.base_url}/download/{job_id}", headers=self.headers, timeout=60)
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/zip", response.text
        return zipfile.ZipFile(io.BytesIO(response.content))

    def download_partial_zip(self, job_id: int) -> zipfile.ZipFile:
        response = httpx.get(
            f"{self.base_url}/download_partial/{job_id}", headers=self.headers, timeout=60
        )
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "application/zip", response.text
        return zipfile.ZipFile(io.BytesIO(response.content))


@contextlib.contextmanager
def cluster(
    root: Path,
    *,
    clients: int = 1,
    server_env: Mapping[str, str] | None = None,
    client_env: Mapping[str, str] | None = None,
) -> Iterator[Cluster]:
    running = Cluster(root)
    try:
        for _ in range(clients):
            running.add_client(client_env)
        running.start_server(server_env)
        yield running
    finally:
        running.shutdown()
