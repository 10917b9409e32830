"""deploy/systemd/: `systemd-analyze verify` accepts the units, and they are hardened.

`verify` also checks that ExecStart's program exists and is executable. The units point at
/usr/local/bin/job-orchestrator, where docs/deploying.md installs it; the test verifies them
against a scratch root laid out that way (the host's own unit directory, for the targets the
units name, plus this checkout's installed `job-orchestrator` entry point at that path), so
a unit that names another program or a target that does not exist still fails.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import sys
from pathlib import Path

import pytest

from testkit import require, unavailable
from tests.deploy.tools import SYSTEMD, run, said

UNITS = sorted(SYSTEMD.glob("*.service"))
SYSTEM_UNIT_DIRS = (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system"))


def parse_unit(path: Path) -> dict[str, list[tuple[str, str]]]:
    """Section -> (key, value) pairs in order; keys may repeat (Environment=)."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), [])
            continue
        key, _, value = line.partition("=")
        current.append((key.strip(), value.strip()))
    return sections


def service_settings(path: Path) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for key, value in parse_unit(path)["Service"]:
        settings.setdefault(key, []).append(value)
    return settings


def scratch_root(tmp_path: Path) -> Path:
    """A root with the system's units and our entry point at /usr/local/bin."""
    system_units = next((path for path in SYSTEM_UNIT_DIRS if path.is_dir()), None)
    if system_units is None:
        unavailable("no systemd unit directory (Debian: apt-get install systemd)")
    entry_point = Path(sys.executable).parent / "job-orchestrator"
    assert entry_point.is_file(), f"{entry_point} missing: pip install -e '.[server]' first"
    root = tmp_path / "root"
    shutil.copytree(system_units, root / "usr/lib/systemd/system", symlinks=True)
    (root / "usr/local/bin").mkdir(parents=True)
    shutil.copy2(entry_point, root / "usr/local/bin/job-orchestrator")
    (root / "etc/systemd/system").mkdir(parents=True)
    for unit in UNITS:
        shutil.copy2(unit, root / "etc/systemd/system" / unit.name)
    return root


def verify(root: Path, *units: str) -> str:
    """What `systemd-analyze verify` says about `units` in `root`; "" means clean."""
    analyze = require("systemd-analyze", "Debian: apt-get install systemd")
    paths = [str(root / "etc/systemd/system" / unit) for unit in units]
    result = run([analyze, "verify", f"--root={root}", "--man=no", "--generators=no", *paths])
    # verify exits 0 on unknown keys and unparsable values, which it only reports: any
    # output is a finding.
    return "" if result.returncode == 0 and not result.stderr.strip() else said(result)


def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    assert [unit.name for unit in UNITS] == [
        "job-orchestrator-client.service",
        "job-orchestrator-server.service",
    ]
    assert verify(scratch_root(tmp_path), *(unit.name for unit in UNITS)) == ""


def test_verify_reports_a_broken_unit(tmp_path: Path) -> None:
    """The check above can fail: a misspelt key, a bad value and a missing program."""
    root = scratch_root(tmp_path)
    unit = root / "etc/systemd/system/broken.service"
    unit.write_text(
        "[Service]\nExecStart=/usr/local/bin/job-orchestratr server\n"
        "ProtectSystm=strict\nNoNewPrivileges=maybe\n"
    )
    findings = verify(root, unit.name)
    assert "job-orchestratr" in findings
    assert "ProtectSystm" in findings
    assert "ignoring: maybe" in findings


def one(settings: dict[str, list[str]], key: str) -> str:
    (value,) = settings[key]
    return value


def environment(settings: dict[str, list[str]]) -> dict[str, str]:
    """The unit's Environment= assignments (several per line allowed)."""
    pairs = (item.partition("=") for line in settings["Environment"] for item in line.split())
    return {name: value for name, _, value in pairs}


@pytest.mark.parametrize("unit", UNITS, ids=lambda path: path.stem)
def test_units_are_hardened(unit: Path) -> None:
    settings = service_settings(unit)
    mode = unit.stem.removeprefix("job-orchestrator-")
    state = f"job-orchestrator-{mode}"

    assert one(settings, "ExecStart") == f"/usr/local/bin/job-orchestrator {mode}"
    assert one(settings, "ProtectSystem") == "strict"
    assert one(settings, "NoNewPrivileges") == "yes"
    assert one(settings, "PrivateTmp") == "yes"
    assert one(settings, "ProtectHome") == "yes"
    assert one(settings, "StateDirectory") == state
    assert one(settings, "ReadWritePaths") == f"/var/lib/{state}"
    assert one(settings, "EnvironmentFile") == f"/etc/job-orchestrator/{mode}.env"
    assert environment(settings)["DATA_PATH"].startswith(f"/var/lib/{state}/")
    assert (SYSTEMD / f"{mode}.env.example").is_file()
    # Issue 21: systemd's soft default of 1024 descriptors ran the server out of them.
    assert int(one(settings, "LimitNOFILE")) >= 65536


@pytest.mark.parametrize("unit", UNITS, ids=lambda path: path.stem)
def test_the_client_token_is_a_credential_in_no_environment(unit: Path) -> None:
    """A job with the client's uid read CLIENT_TOKEN in /proc/<client>/environ (issue 21)."""
    settings = service_settings(unit)
    assert settings["LoadCredential"] == ["client-token:/etc/job-orchestrator/client-token"]
    env = environment(settings)
    assert env["CLIENT_TOKEN_FILE"] == "%d/client-token"
    assert "CLIENT_TOKEN" not in env
    example = (SYSTEMD / f"{unit.stem.removeprefix('job-orchestrator-')}.env.example").read_text()
    assert not re.search(r"^\s*CLIENT_TOKEN=", example, re.MULTILINE)


def test_the_server_runs_as_a_dynamic_user_without_capabilities() -> None:
    settings = service_settings(SYSTEMD / "job-orchestrator-server.service")
    assert one(settings, "DynamicUser") == "yes"
    assert one(settings, "CapabilityBoundingSet") == ""
    assert one(settings, "RestrictNamespaces") == "yes"
    assert one(settings, "StateDirectoryMode") == "0750"


def test_the_client_gives_every_job_its_own_uid_under_bubblewrap() -> None:
    settings = service_settings(CLIENT_UNIT)
    env = environment(settings)
    # Root, for the job uids, held to what that needs; no dynamic user (it cannot switch).
    assert "DynamicUser" not in settings
    assert one(settings, "User") == "root"
    assert set(one(settings, "CapabilityBoundingSet").split()) == CLIENT_CAPABILITIES
    assert one(settings, "AmbientCapabilities") == ""
    assert env["SANDBOX"] == "bwrap"
    first, last = job_users(env)
    assert 0 < first <= last
    # Not systemd's DynamicUser range, where another service's uid may live.
    assert last < 61184 or first > 65519
    # bubblewrap (as the job's uid) makes these namespaces; all else stays refused.
    assert set(one(settings, "RestrictNamespaces").split()) == {
        "user",
        "mnt",
        "pid",
        "net",
        "ipc",
        "uts",
    }
    # They mount over parts of /proc, which stops bubblewrap's /proc (see the next test).
    assert "ProtectKernelTunables" not in settings
    assert "ProtectKernelLogs" not in settings
    # A job's uid must reach its own work directory below the state directory.
    assert one(settings, "StateDirectoryMode") == "0711"


CLIENT_UNIT = SYSTEMD / "job-orchestrator-client.service"
#: What the root client needs: switch to job uids, kill their leftovers, hand over and take
#: back their files. Nothing else (no CAP_SYS_ADMIN: bubblewrap runs as the job's uid).
CLIENT_CAPABILITIES = {
    "CAP_SETUID",
    "CAP_SETGID",
    "CAP_KILL",
    "CAP_CHOWN",
    "CAP_FOWNER",
    "CAP_DAC_OVERRIDE",
}


def job_users(env: dict[str, str]) -> tuple[int, int]:
    first, _, last = env["JOB_USERS"].partition("-")
    return int(first), int(last)


BWRAP_JOB = [
    *("--ro-bind", "/", "/"),
    *("--dev", "/dev"),
    *("--proc", "/proc"),
    *("--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-pid"),
    "--",
    *("sh", "-c", "id -u"),
]


def test_bubblewrap_runs_a_job_within_the_client_units_limits() -> None:
    """What the unit allows is enough: from a root process held to the unit's bounding set
    and no-new-privileges, a job dropped to the first JOB_USERS uid starts bubblewrap with
    the sandbox's namespaces. And what the unit leaves out matters: with part of /proc
    hidden, as ProtectKernelTunables= does, the same job cannot start."""
    if os.geteuid() != 0:
        unavailable("needs root (to drop to a job uid)")
    bwrap = require("bwrap", "Debian: apt-get install bubblewrap")
    setpriv = require("setpriv", "Debian: util-linux")
    unshare = require("unshare", "Debian: util-linux")
    settings = service_settings(CLIENT_UNIT)
    first, _ = job_users(environment(settings))
    bounding = ",".join(
        f"+{name.removeprefix('CAP_').lower()}"
        for name in one(settings, "CapabilityBoundingSet").split()
    )
    as_unit = [setpriv, f"--bounding-set=-all,{bounding}", "--no-new-privs", "--"]
    as_job = [setpriv, f"--reuid={first}", f"--regid={first}", "--clear-groups", "--"]
    started = run([*as_unit, *as_job, bwrap, *BWRAP_JOB])
    assert started.returncode == 0, said(started)
    assert started.stdout.strip() == str(first)

    hide_sysctl = "mount --bind /proc/sys /proc/sys && mount -o remount,bind,ro /proc/sys"
    job = shlex.join([*as_unit, *as_job, bwrap, *BWRAP_JOB])
    hidden = run(
        [unshare, "--mount", "--propagation", "private", "sh", "-c", f"{hide_sysctl} && {job}"]
    )
    assert hidden.returncode != 0, said(hidden)
    assert "Can't mount proc" in hidden.stderr, said(hidden)


def test_client_restart_leaves_running_jobs_to_be_readopted() -> None:
    client = service_settings(CLIENT_UNIT)
    assert client["KillMode"] == ["process"]
