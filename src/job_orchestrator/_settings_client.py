"""The settings only the client reads, in the reference's order (part of settings_table).

Its names are names of settings_table too; read them from there.
"""

from __future__ import annotations

from job_orchestrator._setting import Declarations, Setting

_declare = Declarations()

# --- client ----------------------------------------------------------------------------------
MAX_CONCURRENT = _declare(
    "MAX_CONCURRENT",
    None,
    "scripts run at once on this node; more wait as Prepared",
    "client",
    "client",
    shown="unlimited",
)
KILL_GRACE = _declare(
    "KILL_GRACE",
    "10",
    "seconds between SIGTERM and SIGKILL to a killed job's process group",
    "client",
    "client",
)
REQUIRE_EXIT_TRAP = _declare(
    "REQUIRE_EXIT_TRAP",
    "0",
    "1 to reject scripts without the original's exit trap",
    "client",
    "client",
)
# --- issue 25: the validator's switch, for operators whose jobs are contained otherwise ----
VALIDATE_SCRIPTS = _declare(
    "VALIDATE_SCRIPTS",
    "1",
    "0 to run scripts the validator would reject as unsafe (a missing run.sh still fails)",
    "client",
    "client",
)
RESULT_MAX_MB = _declare(
    "RESULT_MAX_MB",
    None,
    "largest archive the client builds (result or partial copy)",
    "client",
    "client",
    shown="unlimited",
)
ADOPT_HOLD = _declare(
    "ADOPT_HOLD",
    "60",
    "seconds an unstarted payload found at start-up waits to be asked for",
    "client",
    "client",
)
SERVER_LEASE = _declare(
    "SERVER_LEASE",
    "15",
    "a payload starts only if the server asked about it this recently",
    "client",
    "client",
)
EXECUTOR = _declare(
    "EXECUTOR",
    "local",
    "local (a process group here), slurm (one batch job per payload), docker or podman (one "
    "container per payload)",
    "client",
    "client",
)

# --- disk ------------------------------------------------------------------------------------
DISK_RESERVE_MB = _declare(
    "DISK_RESERVE_MB",
    "1024",
    "free space kept on DATA_PATH's file system: below it new payloads are refused (507) and "
    "a job still writing is stopped (Failed, disk full); 0 turns this off",
    "client",
    "disk",
)
JOB_MAX_DISK_MB = _declare(
    "JOB_MAX_DISK_MB",
    None,
    "disk space one payload's directory may take (checked every DISK_CHECK_INTERVAL); past "
    "it the job is stopped and Failed",
    "client",
    "disk",
    shown="unlimited",
)
DISK_CHECK_INTERVAL = _declare(
    "DISK_CHECK_INTERVAL",
    "2",
    "seconds between checks of the free space (and of job sizes, with JOB_MAX_DISK_MB)",
    "client",
    "disk",
)

# --- sandbox ---------------------------------------------------------------------------------
SANDBOX = _declare("SANDBOX", "none", "none, rlimits or bwrap", "client", "sandbox")
JOB_MAX_MEMORY_MB = _declare(
    "JOB_MAX_MEMORY_MB",
    None,
    "address-space limit of a job; with containers the memory limit of the container",
    "client",
    "sandbox",
    shown="unlimited",
)
JOB_MAX_PROCESSES = _declare(
    "JOB_MAX_PROCESSES",
    None,
    "process limit (RLIMIT_NPROC, per uid: one job's with JOB_USERS, all jobs' with JOB_USER; "
    "with containers the container's pids limit)",
    "client",
    "sandbox",
    shown="unlimited",
)
JOB_MAX_FILE_MB = _declare(
    "JOB_MAX_FILE_MB",
    None,
    "largest file a job may write",
    "client",
    "sandbox",
    shown="unlimited",
)
JOB_MAX_CPU_SECONDS = _declare(
    "JOB_MAX_CPU_SECONDS",
    None,
    "CPU time of each process of a job",
    "client",
    "sandbox",
    shown="unlimited",
)
JOB_USER = _declare(
    "JOB_USER",
    None,
    "run every job as this one unprivileged user (the client must run as root); weaker than "
    "JOB_USERS: jobs share the uid, so they can reach each other's files and processes",
    "client",
    "sandbox",
)
JOB_USERS = _declare(
    "JOB_USERS",
    None,
    "FIRST-LAST: a range of numeric uids no account uses; every running job gets one of its "
    "own (gid = uid), reclaimed when it ends; jobs wait Prepared while none is free (the "
    "client must run as root; not with JOB_USER or EXECUTOR=slurm)",
    "client",
    "sandbox",
)

# --- Slurm (EXECUTOR=slurm) ------------------------------------------------------------------
SLURM_PARTITION = _declare(
    "SLURM_PARTITION",
    None,
    "--partition of the jobs",
    "client",
    "slurm",
    shown="cluster default",
)
SLURM_ACCOUNT = _declare(
    "SLURM_ACCOUNT", None, "--account of the jobs", "client", "slurm", shown="user default"
)
SLURM_QOS = _declare("SLURM_QOS", None, "--qos of the jobs", "client", "slurm")
SLURM_POLL_INTERVAL = _declare(
    "SLURM_POLL_INTERVAL",
    "0.5",
    "seconds between two squeue calls; at most 10",
    "client",
    "slurm",
)
SLURM_EXTRA_ARGS = _declare(
    "SLURM_EXTRA_ARGS", None, "more sbatch options, shell-quoted", "client", "slurm"
)

# --- containers (EXECUTOR=docker or podman) --------------------------------------------------
CONTAINER_IMAGE = _declare(
    "CONTAINER_IMAGE",
    None,
    "the local image payloads run in (required with EXECUTOR=docker or podman; never pulled)",
    "client",
    "containers",
)
CONTAINER_IMAGES = _declare(
    "CONTAINER_IMAGES",
    None,
    "comma-separated image names or patterns (`*`, `?`) a server may name for a payload at "
    "/submit (field `container_image`); unset: only CONTAINER_IMAGE",
    "client",
    "containers",
)
CONTAINER_NETWORK = _declare(
    "CONTAINER_NETWORK",
    "none",
    "the network of the containers: none (only loopback) or a network the operator made",
    "client",
    "containers",
)
CONTAINER_SHM_MB = _declare(
    "CONTAINER_SHM_MB", "256", "size of a container's /dev/shm in MiB", "client", "containers"
)
CONTAINER_OPTIONS = _declare(
    "CONTAINER_OPTIONS",
    None,
    "more `create` options of the engine, shell-quoted (e.g. `--runtime runc`)",
    "client",
    "containers",
)
CLIENT_ID = _declare(
    "CLIENT_ID",
    None,
    "this client's name in its containers' names and labels (`jo-<CLIENT_ID>-<payload>`); "
    "two clients on one engine need different ones",
    "client",
    "containers",
    shown="made at first start, kept in DATA_PATH",
)
JOB_MAX_CPUS = _declare(
    "JOB_MAX_CPUS",
    None,
    "CPUs of a container (fractional, e.g. 1.5)",
    "client",
    "containers",
    shown="unlimited",
)
JOB_ENV = _declare(
    "JOB_ENV",
    None,
    "comma-separated names of the client's environment variables a container gets (no other)",
    "client",
    "containers",
)

CLIENT_TABLE: tuple[Setting, ...] = _declare.settings()
