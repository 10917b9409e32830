"""EXECUTOR=docker and EXECUTOR=podman on the real engines of this machine (issue 23).

Payloads go straight to a real client process (`/submit`, `/retrieve`, `/kill`, `/logs`), in
the images scripts/build-payload-test-image builds from the local Debian base (no registry
can be reached). Podman runs here only with `--runtime runc` (CONTAINER_OPTIONS) and the
explicit ulimits the executor passes. Each test's client has a CLIENT_ID of its own, and
every container carrying it is removed at teardown.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import uuid
import zipfile
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from testkit import eventually, unavailable
from testkit.harness import Cluster, Node

ROOT = Path(__file__).resolve().parents[2]
IMAGE = "job-orchestrator-payload-test"
FINAL = ("Completed", "Failed", "Killed", "Invalid")
#: A variable of the client's environment no container may see, and one JOB_ENV passes.
SENTINEL = "JO_CLIENT_SECRET_SENTINEL"
PASSED = "JO_PASSED_TO_JOBS"
#: A script that allocates far more than the 64 MB limit (a file: inline code is refused).
ALLOCATE = "x = bytearray(300 * 1024 * 1024)\nprint('allocated', len(x))\n"
WAIT_FOR_GO = "while [ ! -e go ]; do sleep 0.1; done\n"

# The engines' images and storage are shared: one xdist worker runs these tests.
pytestmark = [pytest.mark.needs_docker, pytest.mark.xdist_group("containers")]


def _engine_problem(engine: str) -> str | None:
    if shutil.which(engine) is None:
        return f"{engine} is not installed"
    check = subprocess.run([engine, "info"], capture_output=True, check=False)
    return f"the {engine} engine does not answer" if check.returncode != 0 else None


@pytest.fixture(scope="session")
def images() -> None:
    """Build the test images once (a no-op when they exist), one builder at a time."""
    if _engine_problem("docker") is not None:
        unavailable("the Docker engine does not answer")
    with open("/tmp/job-orchestrator-payload-test.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        subprocess.run([str(ROOT / "scripts" / "build-payload-test-image")], check=True)


@pytest.fixture(params=["docker", "podman"])
def engine(request: pytest.FixtureRequest, images: None) -> str:
    name: str = request.param
    if (problem := _engine_problem(name)) is not None:
        unavailable(problem)
    return name


@pytest.fixture
def docker(images: None) -> str:
    return "docker"


class Client:
    """One client process with a container executor, driven directly over its API."""

    def __init__(self, cluster: Cluster, engine: str, **env: str) -> None:
        self.engine = engine
        self.client_id = f"t{uuid.uuid4().hex[:12]}"
        settings = {
            "EXECUTOR": engine,
            "CONTAINER_IMAGE": IMAGE,
            "CLIENT_ID": self.client_id,
            "JOB_MAX_MEMORY_MB": "64",
            "KILL_GRACE": "5",
            SENTINEL: "must-not-leak",
            **({"CONTAINER_OPTIONS": "--runtime runc"} if engine == "podman" else {}),
            **env,
        }
        self.node: Node = cluster.add_client(settings, start=False)
        self.cluster = cluster
        self.data = Path(self.node.env["DATA_PATH"])

    def start(self) -> Client:
        self.node.start()
        return self

    def submit(self, script: str, *, headers: dict[str, str] | None = None, **files: str) -> int:
        parts = [("file", (name, content.encode())) for name, content in files.items()]
        parts.append(("file", ("run.sh", script.encode())))
        fields = {k: v for k, v in (headers or {}).items() if k.startswith("container_")}
        sent = {k: v for k, v in (headers or {}).items() if not k.startswith("container_")}
        response = httpx.post(
            f"{self.node.url}/submit", files=parts, data=fields, headers=sent, timeout=30
        )
        assert response.status_code == 200, response.text
        payload_id = response.json()["id"]
        assert isinstance(payload_id, int)
        return payload_id

    def retrieve(self, payload_id: int) -> httpx.Response:
        return httpx.get(f"{self.node.url}/retrieve/{payload_id}", timeout=30)

    def status(self, payload_id: int) -> str:
        response = self.retrieve(payload_id)
        if response.headers["content-type"] == "application/zip":
            return "Completed"
        status: str = response.json()["status"]
        return status

    def wait_for(self, payload_id: int, *statuses: str, timeout_s: float = 90.0) -> httpx.Response:
        last = ""

        def reached() -> httpx.Response | None:
            nonlocal last
            response = self.retrieve(payload_id)
            is_zip = response.headers["content-type"] == "application/zip"
            last = "Completed" if is_zip else response.json()["status"]
            return response if last in statuses else None

        return eventually(
            reached, f"payload {payload_id} to reach {statuses}", timeout_s, detail=lambda: last
        )

    def work(self, payload_id: int) -> Path:
        return self.data / str(payload_id) / "work"

    def name(self, payload_id: int) -> str:
        return f"jo-{self.client_id}-{payload_id}"

    def container(self, payload_id: int) -> dict[str, Any] | None:
        """The engine's inspection of the payload's container; None if there is none."""
        done = subprocess.run(
            [self.engine, "container", "inspect", self.name(payload_id)],
            capture_output=True,
            check=False,
        )
        if done.returncode != 0:
            return None
        found: dict[str, Any] = json.loads(done.stdout)[0]
        return found

    def remove_containers(self) -> None:
        label = f"label=org.job-orchestrator.client={self.client_id}"
        listed = subprocess.run(
            [self.engine, "container", "ls", "-aq", "--filter", label],
            capture_output=True,
            text=True,
            check=False,
        )
        for container in listed.stdout.split():
            subprocess.run([self.engine, "rm", "-f", container], capture_output=True, check=False)


@pytest.fixture
def clients() -> Iterator[list[Client]]:
    """The clients a test made: stopped, and their containers removed, at teardown."""
    made: list[Client] = []
    try:
        yield made
    finally:
        for client in made:
            client.node.stop()
            client.remove_containers()


def make_client(clients: list[Client], tmp_path: Path, engine: str, **env: str) -> Client:
    cluster = Cluster(tmp_path / f"c{len(clients)}")
    cluster.root.mkdir(parents=True, exist_ok=True)
    client = Client(cluster, engine, **env)
    clients.append(client)
    return client.start()


def watchers_of(client: Client) -> list[psutil.Process]:
    """The `<engine> events` processes of this client still alive."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        argv = process.info["cmdline"] or []
        if argv[1:2] == ["events"] and client.client_id in " ".join(argv):
            found.append(process)
    return found


def message(response: httpx.Response) -> str:
    from urllib.parse import unquote

    return unquote(response.headers.get("x-orchestrator-message", ""))


def result_files(response: httpx.Response) -> dict[str, str]:
    with zipfile.ZipFile(BytesIO(response.content)) as archive:
        return {name: archive.read(name).decode() for name in archive.namelist()}


# ---- confinement -------------------------------------------------------------------------

CONFINED = """\
p=/pr; n=net
tail -n +3 ${p}oc/$n/dev | cut -d: -f1 | tr -d ' ' > ifaces.txt
id -u > uid.txt
env > env.txt
grep -E '^(CapEff|NoNewPrivs)' ${p}oc/self/status > status.txt
sleep 30 &
ps -eo args= > ps.txt
kill %1
if test -e "{data}"; then echo visible; else echo invisible; fi > data.txt
if touch /written 2> /dev/null; then echo writable; else echo read-only; fi > root.txt
echo private > /tmp/t && cat /tmp/t > tmp.txt
df -m /dev/shm | tail -n 1 | tr -s ' ' | cut -d' ' -f2 > shm.txt
"""


def test_a_payload_is_confined(engine: str, clients: list[Client], tmp_path: Path) -> None:
    client = make_client(
        clients, tmp_path, engine, JOB_ENV=PASSED, **{PASSED: "given"}, CONTAINER_SHM_MB="128"
    )
    payload = client.submit(CONFINED.replace("{data}", str(client.data)))
    response = client.wait_for(payload, *FINAL)
    assert response.headers["content-type"] == "application/zip", message(response)
    files = result_files(response)
    assert files["ifaces.txt"].split() == ["lo"]
    assert files["uid.txt"].strip() != "0"
    assert SENTINEL not in files["env.txt"]
    assert f"{PASSED}=given" in files["env.txt"]
    assert "CapEff:\t0000000000000000" in files["status.txt"]
    assert "NoNewPrivs:\t1" in files["status.txt"]
    processes = files["ps.txt"].splitlines()
    # The init, run.sh, its sleep and ps itself: nothing of the host (not the client).
    assert len(processes) == 4, processes
    assert not any("job_orchestrator" in line for line in processes)
    assert files["data.txt"].strip() == "invisible"
    assert files["root.txt"].strip() == "read-only"
    assert files["tmp.txt"].strip() == "private"
    assert int(files["shm.txt"]) == 128
    assert client.container(payload) is None  # removed once ended


def test_jobs_run_as_their_uid_of_job_users(
    docker: str, clients: list[Client], tmp_path: Path
) -> None:
    if os.geteuid() != 0:
        pytest.skip("JOB_USERS needs a root client")
    client = make_client(clients, tmp_path, docker, JOB_USERS="91000-91001")
    payload = client.submit("id -u > uid.txt\ntouch made-by-the-job\n")
    response = client.wait_for(payload, *FINAL)
    assert response.headers["content-type"] == "application/zip", message(response)
    assert int(result_files(response)["uid.txt"]) in (91000, 91001)
    # Taken back once it ended: nothing is left under the uid before it is reused.
    assert (client.work(payload) / "made-by-the-job").stat().st_uid == os.getuid()


# ---- limits ------------------------------------------------------------------------------


def test_memory_kills_are_reported(engine: str, clients: list[Client], tmp_path: Path) -> None:
    client = make_client(clients, tmp_path, engine)
    killed = client.submit("exec python3 allocate.py\n", **{"allocate.py": ALLOCATE})
    child = client.submit(
        "python3 allocate.py; echo child=$?\nexit 0\n", **{"allocate.py": ALLOCATE}
    )
    ordinary = client.submit("exit 3\n")
    response = client.wait_for(killed, *FINAL)
    assert client.status(killed) == "Failed"
    assert message(response) == "out of memory: limit 64 MB"
    assert response.headers["x-orchestrator-exit-code"] == "137"
    response = client.wait_for(child, *FINAL)
    assert response.headers["content-type"] == "application/zip", message(response)
    assert "killed for memory" in message(response)
    assert "child=137" in (client.data / str(child) / "output.log").read_text()
    response = client.wait_for(ordinary, *FINAL)
    assert message(response).startswith("run.sh exited with status 3")
    metrics = httpx.get(f"{client.node.url}/metrics", timeout=10).text
    assert "job_orchestrator_client_memory_kills_total 2.0" in metrics
    assert "job_orchestrator_client_container_start_seconds_count 3.0" in metrics


def test_the_wall_time_limit_stops_the_container(
    docker: str, clients: list[Client], tmp_path: Path
) -> None:
    client = make_client(clients, tmp_path, docker, KILL_GRACE="1")
    payload = client.submit("sleep 60\n", headers={"X-Orchestrator-Timeout": "1"})
    response = client.wait_for(payload, *FINAL, timeout_s=30)
    assert message(response) == "wall-time limit of 1 s exceeded"
    assert client.container(payload) is None


# ---- restarts ----------------------------------------------------------------------------

SURVIVOR = "echo started >> starts.txt\necho running\n" + WAIT_FOR_GO + "echo done > out.txt\n"


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "kill9"])
def test_running_containers_survive_a_client_restart(
    engine: str, stop: signal.Signals, clients: list[Client], tmp_path: Path
) -> None:
    client = make_client(clients, tmp_path, engine)
    payload = client.submit(SURVIVOR)
    eventually(lambda: (client.work(payload) / "starts.txt").exists(), "starts.txt")
    log = httpx.get(f"{client.node.url}/logs/{payload}", timeout=10)
    assert log.text == "running\n"  # the live log, while it runs
    client.node.stop(stop)
    # The client's `events` watcher does not outlive it, not even a kill -9.
    eventually(lambda: not watchers_of(client), "no watcher left", timeout_s=10)
    container = client.container(payload)
    assert container is not None
    assert container["State"]["Running"]
    client.node.start()
    (client.work(payload) / "go").touch()
    response = client.wait_for(payload, *FINAL)
    assert response.headers["content-type"] == "application/zip", message(response)
    assert result_files(response)["out.txt"] == "done\n"
    assert (client.work(payload) / "starts.txt").read_text() == "started\n"  # never twice
    assert client.container(payload) is None


def test_a_launch_the_client_did_not_record_is_adopted_not_repeated(
    docker: str, clients: list[Client], tmp_path: Path
) -> None:
    """kill -9 between the container's start and the state write that records it."""
    client = make_client(clients, tmp_path, docker)
    payload = client.submit(SURVIVOR)
    eventually(lambda: (client.work(payload) / "starts.txt").exists(), "starts.txt")
    client.node.stop(signal.SIGKILL)
    state_file = client.data / str(payload) / "state.json"
    state = json.loads(state_file.read_text())
    state.update(status="Prepared", handle=None, started_at=None)
    state_file.write_text(json.dumps(state))
    client.node.start()
    client.wait_for(payload, "Running")
    (client.work(payload) / "go").touch()
    response = client.wait_for(payload, *FINAL)
    assert response.headers["content-type"] == "application/zip", message(response)
    assert (client.work(payload) / "starts.txt").read_text() == "started\n"


def end_while_the_client_is_down(client: Client, payload: int) -> None:
    """Kill -9 the client once the job started, let the job end (its container exits), then
    start the client again."""
    eventually(lambda: (client.work(payload) / "started").exists(), "the job to start")
    client.node.stop(signal.SIGKILL)
    (client.work(payload) / "go").touch()

    def ended() -> bool:
        container = client.container(payload)
        return container is not None and container["State"]["Status"] == "exited"

    eventually(ended, "the job to end")
    client.node.start()


def test_a_container_that_ended_while_the_client_was_down_is_collected(
    engine: str, clients: list[Client], tmp_path: Path
) -> None:
    client = make_client(clients, tmp_path, engine)
    payload = client.submit("touch started\n" + WAIT_FOR_GO + "exit 3\n")
    end_while_the_client_is_down(client, payload)
    response = client.wait_for(payload, *FINAL)
    assert client.status(payload) == "Failed"
    assert response.headers["x-orchestrator-exit-code"] == "3"
    assert message(response) == "run.sh exited with status 3"
    assert client.container(payload) is None


def test_a_memory_kill_while_the_client_was_down_is_reported(
    engine: str, clients: list[Client], tmp_path: Path
) -> None:
    client = make_client(clients, tmp_path, engine)
    payload = client.submit(
        "touch started\n" + WAIT_FOR_GO + "exec python3 allocate.py\n",
        **{"allocate.py": ALLOCATE},
    )
    end_while_the_client_is_down(client, payload)
    response = client.wait_for(payload, *FINAL)
    assert message(response) == "out of memory: limit 64 MB"


def test_containers_of_unknown_payloads_are_removed_at_start(
    docker: str, clients: list[Client], tmp_path: Path
) -> None:
    client = make_client(clients, tmp_path, docker)
    client.node.stop()
    stray = client.name(999)
    subprocess.run(
        [
            *("docker", "container", "create", "--name", stray),
            f"--label=org.job-orchestrator.client={client.client_id}",
            *(IMAGE, "true"),
        ],
        check=True,
        capture_output=True,
    )
    client.node.start()
    eventually(lambda: client.container(999) is None, "container 999 gone", timeout_s=30)


# ---- kill and failures ---------------------------------------------------------------------

POLITE = """\
trap 'echo term > term.txt; exit 143' TERM
sleep 300 &
touch started
wait
"""


def test_a_kill_stops_and_removes_the_container(
    engine: str, clients: list[Client], tmp_path: Path
) -> None:
    client = make_client(clients, tmp_path, engine)
    payload = client.submit(POLITE)
    eventually(lambda: (client.work(payload) / "started").exists(), "the job to start")
    assert httpx.post(f"{client.node.url}/kill/{payload}", timeout=30).status_code == 200
    client.wait_for(payload, "Killed")
    assert (client.work(payload) / "term.txt").read_text() == "term\n"  # SIGTERM came first
    eventually(lambda: client.container(payload) is None, "the container gone", timeout_s=30)


def test_a_missing_image_fails_the_job_and_the_client_stays_healthy(
    docker: str, clients: list[Client], tmp_path: Path
) -> None:
    client = make_client(clients, tmp_path, docker, CONTAINER_IMAGE="jo-no-such-image:never")
    payload = client.submit("echo never\n")
    response = client.wait_for(payload, *FINAL)
    assert client.status(payload) == "Failed"
    assert "does not exist on this client" in message(response)
    assert httpx.get(f"{client.node.url}/health", timeout=10).status_code == 200


def test_an_unreachable_engine_at_start_stops_the_client(docker: str, tmp_path: Path) -> None:
    cluster = Cluster(tmp_path)
    client = Client(cluster, docker, DOCKER_HOST="unix:///nonexistent/docker.sock")
    done = subprocess.run(
        client.node.command(), env=client.node.env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert "the docker engine does not answer" in done.stderr


# ---- what a server may ask ---------------------------------------------------------------


def test_a_server_may_name_an_allowed_image_and_mounts(
    docker: str, clients: list[Client], tmp_path: Path
) -> None:
    client = make_client(clients, tmp_path, docker, CONTAINER_IMAGES=f"{IMAGE}:a*")
    mounts = json.dumps([{"source": "outputs", "target": "/outputs"}])
    allowed = client.submit(
        'echo "$JO_TEST_IMAGE" > /outputs/image.txt\n',
        headers={"container_image": f"{IMAGE}:alt", "container_mounts": mounts},
    )
    refused = client.submit("echo never\n", headers={"container_image": "debian:bookworm"})
    response = client.wait_for(allowed, *FINAL)
    assert result_files(response)["outputs/image.txt"] == "alt\n"
    response = client.wait_for(refused, *FINAL)
    assert (
        message(response)
        == "image 'debian:bookworm' is not allowed on this client (CONTAINER_IMAGES)"
    )
    bad = httpx.post(
        f"{client.node.url}/submit",
        files=[("file", ("run.sh", b"true\n"))],
        data={"container_mounts": json.dumps([{"source": "../x", "target": "/x"}])},
        timeout=30,
    )
    assert bad.status_code == 400
    assert "not a relative path" in bad.text


def test_a_service_names_its_image_through_the_server(
    docker: str, clients: list[Client], tmp_path: Path
) -> None:
    client = make_client(clients, tmp_path, docker, CONTAINER_IMAGES=f"{IMAGE}:a*")
    cluster = client.cluster
    server = cluster.start_server({"SERVICE_EXAMPLE_CONTAINER_IMAGE": f"{IMAGE}:alt"})
    try:
        job_id = cluster.api.submit('echo "$JO_TEST_IMAGE" > image.txt\n')
        body = cluster.api.wait_for(job_id, *FINAL, timeout_s=120)
        assert body["status"] == "Completed", body
        assert cluster.api.download_zip(job_id).read("image.txt") == b"alt\n"
    finally:
        server.stop()


# ---- an engine that stops answering --------------------------------------------------------


class SocketProxy:
    """A unix socket that forwards to the Docker engine's own, until it is stopped: the
    engine's outage as the client sees it, without touching the engine other tests use."""

    def __init__(self, path: Path, upstream: str = "/var/run/docker.sock") -> None:
        self.path = path
        self.upstream = upstream
        self._open: list[socket.socket] = []
        self._listener: socket.socket | None = None

    def start(self) -> None:
        self.path.unlink(missing_ok=True)
        listener = socket.socket(socket.AF_UNIX)
        listener.bind(str(self.path))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def stop(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        for connection in self._open:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
            connection.close()
        self._open.clear()
        self.path.unlink(missing_ok=True)

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                downstream, _ = listener.accept()
            except OSError:
                return
            upstream = socket.socket(socket.AF_UNIX)
            upstream.connect(self.upstream)
            self._open += [downstream, upstream]
            for source, target in ((downstream, upstream), (upstream, downstream)):
                threading.Thread(target=_pump, args=(source, target), daemon=True).start()


def _pump(source: socket.socket, target: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := source.recv(65536):
            target.sendall(data)
    with contextlib.suppress(OSError):
        target.shutdown(socket.SHUT_WR)


def test_an_engine_outage_keeps_payloads_waiting_and_loses_nothing(
    docker: str, clients: list[Client], tmp_path: Path
) -> None:
    proxy = SocketProxy(tmp_path / "docker.sock")
    proxy.start()
    try:
        client = make_client(clients, tmp_path, docker, DOCKER_HOST=f"unix://{proxy.path}")
        running = client.submit("touch started\n" + WAIT_FOR_GO + "echo first > out.txt\n")
        eventually(lambda: (client.work(running) / "started").exists(), "the job to start")
        proxy.stop()
        waiting = client.submit("echo second > out.txt\n")
        eventually(
            lambda: f"payload {waiting} waits: the docker engine" in client.node.log(),
            "the wait for the engine logged",
        )
        (client.work(running) / "go").touch()  # it ends while the client cannot see it
        assert client.status(waiting) == "Prepared"
        assert client.status(running) == "Running"
        proxy.start()
        first = client.wait_for(running, *FINAL)
        second = client.wait_for(waiting, *FINAL)
        assert result_files(first)["out.txt"] == "first\n"
        assert result_files(second)["out.txt"] == "second\n"
        assert httpx.get(f"{client.node.url}/health", timeout=10).status_code == 200
    finally:
        proxy.stop()
