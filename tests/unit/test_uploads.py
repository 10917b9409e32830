"""Uploads in progress: staging directories, their locks, the caps, and their settings.

The lock tests use real flock locks held by this process or by a child process, since the
point is that a dead owner (even one killed with SIGKILL) is told apart from a live one.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from job_orchestrator.config import load_client_settings, load_server_settings
from job_orchestrator.errors import ConfigError
from job_orchestrator.server.uploads import (
    LOCK_NAME,
    STAGING_PREFIX,
    UNLOCKED_GRACE_S,
    Staging,
    UploadLimits,
    is_staging,
    remove_abandoned,
)

NOTHING_LIVE: frozenset[str] = frozenset()


def staged(data_path: Path) -> Staging:
    staging = Staging(data_path)
    staging.create()
    (staging.path / "input").mkdir()
    (staging.path / "input" / "run.sh").write_text("exit 0\n")
    return staging


def test_staging_names_are_recognisable(tmp_path: Path) -> None:
    staging = Staging(tmp_path)
    assert staging.path.name.startswith(STAGING_PREFIX)
    assert is_staging(staging.path.name)
    assert not is_staging(staging.final.name)
    assert staging.path.name == STAGING_PREFIX + staging.final.name


def test_a_live_upload_is_never_removed(tmp_path: Path) -> None:
    staging = staged(tmp_path)
    try:
        # Another open file description of this process: flock still excludes it.
        assert remove_abandoned(tmp_path, NOTHING_LIVE) == 0
        assert remove_abandoned(tmp_path, frozenset({staging.path.name})) == 0
        assert staging.path.is_dir()
    finally:
        staging.close()


def test_an_upload_whose_owner_closed_its_lock_is_removed(tmp_path: Path) -> None:
    staging = staged(tmp_path)
    staging.close()
    assert remove_abandoned(tmp_path, NOTHING_LIVE) == 1
    assert not staging.path.exists()


def test_an_upload_whose_process_was_killed_is_removed(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from pathlib import Path\n"
            "from job_orchestrator.server.uploads import Staging\n"
            "s = Staging(Path(sys.argv[1])); s.create(); print(s.path, flush=True)\n"
            "time.sleep(600)\n",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        path = Path(holder.stdout.readline().strip())
        assert (path / LOCK_NAME).is_file()
        assert remove_abandoned(tmp_path, NOTHING_LIVE) == 0  # alive in another process
        holder.send_signal(signal.SIGKILL)
        holder.wait(30)
        assert remove_abandoned(tmp_path, NOTHING_LIVE) == 1
        assert not path.exists()
    finally:
        holder.kill()
        holder.wait()


def test_unlocked_staging_is_removed_only_once_unchanged_for_the_grace(tmp_path: Path) -> None:
    staging = staged(tmp_path)
    staging.close()
    (staging.path / LOCK_NAME).unlink()
    now = time.time()
    assert remove_abandoned(tmp_path, NOTHING_LIVE, now=now) == 0
    assert remove_abandoned(tmp_path, NOTHING_LIVE, now=now + UNLOCKED_GRACE_S / 2) == 0
    assert remove_abandoned(tmp_path, NOTHING_LIVE, now=now + UNLOCKED_GRACE_S + 5) == 1
    assert not staging.path.exists()


def test_a_file_written_recently_keeps_an_unlocked_staging(tmp_path: Path) -> None:
    staging = staged(tmp_path)
    staging.close()
    (staging.path / LOCK_NAME).unlink()
    old = time.time() - 2 * UNLOCKED_GRACE_S
    for path in (staging.path, staging.path / "input"):
        os.utime(path, (old, old))
    # run.sh was just written, so the upload may still be going.
    assert remove_abandoned(tmp_path, NOTHING_LIVE) == 0
    os.utime(staging.path / "input" / "run.sh", (old, old))
    assert remove_abandoned(tmp_path, NOTHING_LIVE) == 1


def test_other_entries_are_left_alone(tmp_path: Path) -> None:
    (tmp_path / "0b9a-not-staging").mkdir()
    (tmp_path / f"{STAGING_PREFIX}file").write_text("not a directory")
    target = tmp_path / "elsewhere"
    target.mkdir()
    (tmp_path / f"{STAGING_PREFIX}link").symlink_to(target)
    assert remove_abandoned(tmp_path, NOTHING_LIVE, now=time.time() + 10 * UNLOCKED_GRACE_S) == 0
    assert sorted(entry.name for entry in tmp_path.iterdir()) == sorted(
        ["0b9a-not-staging", f"{STAGING_PREFIX}file", f"{STAGING_PREFIX}link", "elsewhere"]
    )
    assert remove_abandoned(tmp_path / "missing", NOTHING_LIVE) == 0


def test_commit_moves_the_files_and_drops_the_lock_file(tmp_path: Path) -> None:
    staging = staged(tmp_path)
    old = time.time() - 3600
    os.utime(staging.path, (old, old))
    try:
        final = staging.commit()
    finally:
        staging.close()
    assert final == staging.final
    assert not staging.path.exists()
    assert sorted(entry.name for entry in final.iterdir()) == ["input"]
    assert (final / "input" / "run.sh").read_text() == "exit 0\n"
    # Fresh, so the orphan rule (no row and older than MAX_AGE) cannot take it yet.
    assert final.stat().st_mtime > time.time() - 60
    assert remove_abandoned(tmp_path, NOTHING_LIVE) == 0


def test_limits_per_client_and_in_total() -> None:
    limits = UploadLimits(max_total=3, max_per_client=2)
    assert limits.admit("a")
    assert limits.admit("a")
    assert not limits.admit("a")
    assert limits.admit("b")
    assert not limits.admit("c")  # three in total
    limits.release("a")
    assert limits.admit("c")
    assert not limits.admit("b")
    limits.release("b")
    limits.release("c")
    assert limits.admit("a")


def test_zero_means_no_limit() -> None:
    limits = UploadLimits(max_total=0, max_per_client=0)
    assert all(limits.admit("a") for _ in range(1000))


def test_live_tracks_staging_names(tmp_path: Path) -> None:
    limits = UploadLimits(max_total=0, max_per_client=0)
    staging = Staging(tmp_path)
    with limits.tracking(staging):
        assert limits.live == {staging.path.name}
    assert limits.live == set()


def test_upload_settings(tmp_path: Path) -> None:
    base = {"DATA_PATH": str(tmp_path)}
    defaults = load_server_settings(base)
    assert defaults.upload_idle_timeout_s == 60
    assert defaults.upload_max_concurrent == 128
    assert defaults.upload_max_per_client == 32
    assert load_client_settings(base).upload_idle_timeout_s == 60
    custom = load_server_settings(
        {
            **base,
            "UPLOAD_IDLE_TIMEOUT": "2.5",
            "UPLOAD_MAX_CONCURRENT": "0",
            "UPLOAD_MAX_PER_CLIENT": "+4",
        }
    )
    assert custom.upload_idle_timeout_s == 2.5
    assert custom.upload_max_concurrent == 0
    assert custom.upload_max_per_client == 4
    assert load_client_settings({**base, "UPLOAD_IDLE_TIMEOUT": "0"}).upload_idle_timeout_s == 0


@pytest.mark.parametrize(
    ("variable", "raw"),
    [
        ("UPLOAD_IDLE_TIMEOUT", "-1"),
        ("UPLOAD_IDLE_TIMEOUT", "soon"),
        ("UPLOAD_MAX_CONCURRENT", "-1"),
        ("UPLOAD_MAX_PER_CLIENT", "many"),
    ],
)
def test_bad_upload_settings_name_the_variable(tmp_path: Path, variable: str, raw: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_server_settings({"DATA_PATH": str(tmp_path), variable: raw})
    assert variable in str(info.value)
