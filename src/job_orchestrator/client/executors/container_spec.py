"""How a payload's container is made: its identity, its files, and the engine's `create`.

Confinement by default: the payload's work directory at /work is the only thing of the host
mounted (plus its output.log, as a single file, and subdirectories a server asked for, see
client/container_request.py); a read-only root with a private /tmp; the network CONTAINER_NETWORK
(`none`: loopback only); no capabilities and no new privileges; a uid that is never 0 (the
payload's of JOB_USERS, else JOB_USER's, else nobody's when the client is root, else the
client's own, which reaches nothing of the host but the work directory); only the variables
JOB_ENV lists; the limits set by the engine. An init (docker-init, tini or catatonit) is PID 1:
it reaps, and forwards SIGTERM to run.sh's whole process group (TINI_KILL_PROCESS_GROUP).
"""

from __future__ import annotations

import contextlib
import os
import resource
import secrets
import shutil
from pathlib import Path

from job_orchestrator.client.container_request import LOG_TARGET, WORKDIR, ContainerRequest
from job_orchestrator.client.executors.engine import LABEL_CLIENT, LABEL_PAYLOAD, Engine
from job_orchestrator.client.payload import Payload
from job_orchestrator.client.sandbox import JobUser, hand_over, resolve_user
from job_orchestrator.config import ClientSettings

#: The uid (and gid) of a job without JOB_USERS or JOB_USER when the client is root: nobody.
UNPRIVILEGED_ID = 65534
CLIENT_ID_FILE = ".client-id"
#: Beside exit/code: present when a process of the container was killed for memory.
OOM_FILE = "oom"
#: How the container runs run.sh: its output to the mounted log, appended, stdin closed.
#: bash is the entry point whatever the image's own (a tool image's ENTRYPOINT would take
#: these as its arguments): the job is `bash run.sh`, its output appended to the log.
_ENTRYPOINT = "--entrypoint=bash"
_COMMAND = ["-c", 'exec >>"$0" 2>&1 </dev/null; exec bash run.sh', LOG_TARGET]


def client_identity(settings: ClientSettings) -> str:
    """CLIENT_ID, else the one made at the first start and kept in DATA_PATH."""
    if settings.containers.client_id:
        return settings.containers.client_id
    path = settings.data_path / CLIENT_ID_FILE
    with contextlib.suppress(OSError):
        kept = path.read_text().strip()
        if kept:
            return kept
    settings.data_path.mkdir(parents=True, exist_ok=True)
    made = secrets.token_hex(4)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(made + "\n")
    os.replace(temporary, path)
    return made


def job_user(settings: ClientSettings, payload: Payload) -> JobUser:
    """Whom the job runs as: never root, and never the client's uid when it is root."""
    if payload.uid is not None:
        return JobUser(str(payload.uid), payload.uid, payload.uid)
    if settings.job_user is not None:
        return resolve_user(settings.job_user)
    if os.geteuid() == 0:
        return JobUser("nobody", UNPRIVILEGED_ID, UNPRIVILEGED_ID)
    # A client that is not root cannot give files away: the job gets its uid, which inside
    # a container reaches nothing of the host but the mounted work directory.
    return JobUser("client", os.getuid(), os.getgid())


def prepare(payload: Payload, user: JobUser, request: ContainerRequest) -> None:
    """The payload's files as the container needs them (run in a thread)."""
    (payload.paths.exit_code.parent / OOM_FILE).unlink(missing_ok=True)
    request.make_sources(payload.paths.work)
    payload.paths.log.touch()
    if os.geteuid() == 0 and user.uid != 0:
        hand_over([payload.paths.work], user)
        os.chown(payload.paths.log, user.uid, user.gid)


def create_argv(
    settings: ClientSettings,
    fixed: list[str],
    client_id: str,
    payload: Payload,
    name: str,
    image: str,
    request: ContainerRequest,
    user: JobUser,
) -> list[str]:
    """`<engine> container create ...` for the payload (without the program's name)."""
    containers = settings.containers
    work = payload.paths.work
    argv = [
        "container",
        "create",
        f"--name={name}",
        f"--label={LABEL_CLIENT}={client_id}",
        f"--label={LABEL_PAYLOAD}={payload.id}",
        "--pull=never",
        f"--user={user.uid}:{user.gid}",
        f"--network={containers.network}",
        "--cap-drop=ALL",
        "--security-opt=no-new-privileges",
        "--read-only",
        "--tmpfs=/tmp:rw,nosuid,nodev,mode=1777",
        f"--shm-size={containers.shm_mb}m",
        "--log-driver=none",
        f"--mount=type=bind,source={work},target={WORKDIR}",
        *request.mount_options(work),
        f"--mount=type=bind,source={payload.paths.log},target={LOG_TARGET}",
        f"--workdir={WORKDIR}",
        _ENTRYPOINT,
        *fixed,
    ]
    if settings.job_max_memory_mb:
        # No swap beyond it: the limit is the job's memory, the whole process tree's.
        memory = f"{settings.job_max_memory_mb}m"
        argv += [f"--memory={memory}", f"--memory-swap={memory}"]
    if containers.max_cpus:
        argv.append(f"--cpus={containers.max_cpus:g}")
    if settings.job_max_processes:
        argv.append(f"--pids-limit={settings.job_max_processes}")
    if settings.job_max_file_mb:
        size = settings.job_max_file_mb * 1024 * 1024
        argv.append(f"--ulimit=fsize={size}:{size}")
    if settings.job_max_cpu_seconds:
        seconds = settings.job_max_cpu_seconds  # SIGXCPU first, SIGKILL a second later
        argv.append(f"--ulimit=cpu={seconds}:{seconds + 1}")
    environment = {"HOME": WORKDIR, "TMPDIR": "/tmp", "TINI_KILL_PROCESS_GROUP": "1"}
    for variable in containers.env:
        if variable in os.environ:
            environment[variable] = os.environ[variable]
    argv += [f"--env={key}={value}" for key, value in environment.items()]
    return [*argv, *containers.options, image, *_COMMAND]


def engine_options(engine: Engine) -> list[str]:
    """What every create needs on this engine: an init, and Podman's explicit ulimits."""
    options = ["--init"]
    if engine.is_podman:
        if not Path("/usr/libexec/podman/catatonit").exists():
            init = shutil.which("docker-init") or shutil.which("tini")
            if init is not None:
                options.append(f"--init-path={init}")
            else:  # bash is then PID 1: SIGTERM waits for the grace, then SIGKILL
                options = []
        # Podman's default (`host`) asks for limits this process may not set without
        # CAP_SYS_RESOURCE: the inherited hard limits, explicitly, and no more than Podman
        # itself gives conmon (RLIMIT_NPROC 32768: above, runc's setrlimit fails).
        for name, which, ceiling in (
            ("nofile", resource.RLIMIT_NOFILE, 1 << 20),
            ("nproc", resource.RLIMIT_NPROC, 32768),
        ):
            hard = resource.getrlimit(which)[1]
            value = ceiling if hard == resource.RLIM_INFINITY else min(hard, ceiling)
            options.append(f"--ulimit={name}={value}:{value}")
    return options


def launch_failure(image: str, error: str) -> str:
    """The message of a create the engine refused."""
    lowered = error.lower()
    if "no such image" in lowered or "image not known" in lowered or "not found" in lowered:
        return f"image {image!r} does not exist on this client (images are never pulled)"
    return f"the container could not be created: {error}"
