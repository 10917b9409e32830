"""EXECUTOR=slurm pieces that need no cluster: settings, the state mapping, state files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from job_orchestrator.client.executors.base import Handle
from job_orchestrator.client.executors.slurm_states import outcome_for, sacct_exit_code
from job_orchestrator.client.registry import Registry
from job_orchestrator.config import load_client_settings
from job_orchestrator.errors import ConfigError
from job_orchestrator.status import Status

needs_sbatch = pytest.mark.skipif(shutil.which("sbatch") is None, reason="sbatch not installed")


def test_local_is_the_default_executor() -> None:
    assert load_client_settings({}).executor == "local"


def test_unknown_executor_is_refused() -> None:
    with pytest.raises(ConfigError, match="EXECUTOR"):
        load_client_settings({"EXECUTOR": "kubernetes"})


@needs_sbatch
def test_slurm_settings_become_sbatch_options() -> None:
    settings = load_client_settings(
        {
            "EXECUTOR": "slurm",
            "SLURM_PARTITION": "gpu",
            "SLURM_ACCOUNT": "lab",
            "SLURM_QOS": "short",
            "SLURM_EXTRA_ARGS": '--mem=4G --comment "two words"',
        }
    )
    assert settings.slurm.sbatch_options() == [
        "--partition=gpu",
        "--account=lab",
        "--qos=short",
        "--mem=4G",
        "--comment",
        "two words",
    ]


@needs_sbatch
def test_unparsable_extra_args_are_refused() -> None:
    with pytest.raises(ConfigError, match="SLURM_EXTRA_ARGS"):
        load_client_settings({"EXECUTOR": "slurm", "SLURM_EXTRA_ARGS": "--comment 'open"})


@pytest.mark.parametrize(
    ("state", "exit_code", "expected_code", "failure"),
    [
        ("COMPLETED", 0, 0, None),
        ("COMPLETED", None, 0, None),
        ("FAILED", 3, 3, None),
        ("FAILED", None, None, "failed before run.sh ended"),
        ("TIMEOUT", 0, 0, "wall-time limit"),
        ("TIMEOUT", None, None, "wall-time limit"),
        ("OUT_OF_MEMORY", 137, 137, "out of memory"),
        ("NODE_FAIL", None, None, "node failed"),
        ("BOOT_FAIL", None, None, "boot"),
        ("CANCELLED by 1000", 143, 143, "cancelled in Slurm (by 1000)"),
        ("CANCELLED", None, None, "cancelled in Slurm"),
        ("PREEMPTED", None, None, "preempted"),
        ("DEADLINE", None, None, "DEADLINE"),
    ],
)
def test_ended_states_map_to_outcomes(
    state: str, exit_code: int | None, expected_code: int | None, failure: str | None
) -> None:
    outcome = outcome_for(state, "None", exit_code)
    assert outcome.exit_code == expected_code
    if failure is None:
        assert outcome.failure is None
    else:
        assert outcome.failure is not None
        assert failure in outcome.failure


def test_a_wall_time_kill_is_never_a_success() -> None:
    # The script may well have exited 0 on SIGTERM: Slurm's TIMEOUT still wins.
    assert outcome_for("TIMEOUT", "TimeLimit", 0).failure is not None


def test_sacct_exit_codes() -> None:
    assert sacct_exit_code("3:0") == 3
    assert sacct_exit_code("0:15") == 128 + 15
    assert sacct_exit_code("") is None


def test_state_files_of_the_previous_version_are_re_adopted(tmp_path: Path) -> None:
    """A client upgrade must find the pid of a payload that was running."""
    root = tmp_path / "7"
    for directory in ("work", "exit", "tmp"):
        (root / directory).mkdir(parents=True)
    old = {
        "id": 7,
        "status": "Running",
        "loc": str(root / "work"),
        "pid": 4242,
        "pid_started_at": 1700000000.5,
        "killed": 0,
        "message": "",
        "exit_code": None,
        "dispatch_key": None,
        "timeout_s": 30.0,
        "timed_out": 0,
        "created_at": 1700000000.0,
        "finished_at": None,
        "collected_at": None,
    }
    (root / "state.json").write_text(json.dumps(old))
    [payload] = Registry(tmp_path).rebuild()
    assert payload.status is Status.RUNNING
    assert payload.pid == 4242
    assert Handle.decode(payload.handle) == Handle("local", 4242, 1700000000.5)
    assert payload.started_at == 1700000000.5
    assert payload.wire()["pid"] == 4242


@needs_sbatch
@pytest.mark.parametrize("raw", ["0", "11", "fast"])
def test_poll_interval_must_be_short_and_positive(raw: str) -> None:
    with pytest.raises(ConfigError, match="SLURM_POLL_INTERVAL"):
        load_client_settings({"EXECUTOR": "slurm", "SLURM_POLL_INTERVAL": raw})
