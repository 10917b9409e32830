"""deploy/systemd/: `systemd-analyze verify` accepts the units, and they are hardened.

`verify` also checks that ExecStart's program exists and is executable. The units point at
/usr/local/bin/job-orchestrator, where the README installs it; the test verifies them
against a scratch root laid out that way (the host's own unit directory, for the targets the
units name, plus this checkout's installed `job-orchestrator` entry point at that path), so
a unit that names another program or a target that does not exist still fails.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from tests.deploy.tools import SYSTEMD, missing, require_program, run, said

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
        missing("no systemd unit directory (Debian: apt-get install systemd)")
    entry_point = Path(sys.executable).parent / "job-orchestrator"
    assert entry_point.is_file(), f"{entry_point} missing: pip install -e . first"
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
    analyze = require_program("systemd-analyze", "Debian: apt-get install systemd")
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


@pytest.mark.parametrize("unit", UNITS, ids=lambda path: path.stem)
def test_units_are_hardened(unit: Path) -> None:
    settings = service_settings(unit)
    mode = unit.stem.removeprefix("job-orchestrator-")
    state = f"job-orchestrator-{mode}"

    def one(key: str) -> str:
        (value,) = settings[key]
        return value

    assert one("ExecStart") == f"/usr/local/bin/job-orchestrator {mode}"
    assert one("DynamicUser") == "yes"
    assert one("ProtectSystem") == "strict"
    assert one("NoNewPrivileges") == "yes"
    assert one("PrivateTmp") == "yes"
    assert one("ProtectHome") == "yes"
    assert one("CapabilityBoundingSet") == ""
    assert one("StateDirectory") == state
    assert one("ReadWritePaths") == f"/var/lib/{state}"
    assert one("EnvironmentFile") == f"/etc/job-orchestrator/{mode}.env"
    data_path = next(
        value.removeprefix("DATA_PATH=")
        for value in settings["Environment"]
        if value.startswith("DATA_PATH=")
    )
    assert data_path.startswith(f"/var/lib/{state}/")
    assert (SYSTEMD / f"{mode}.env.example").is_file()


def test_client_restart_leaves_running_jobs_to_be_readopted() -> None:
    client = service_settings(SYSTEMD / "job-orchestrator-client.service")
    assert client["KillMode"] == ["process"]
