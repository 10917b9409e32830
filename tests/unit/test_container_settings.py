"""EXECUTOR=docker|podman settings, and what a server may ask of a container at /submit."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from job_orchestrator.client.container_request import (
    ContainerRequest,
    ContainerRequestError,
)
from job_orchestrator.config import ContainerSettings, load_client_settings
from job_orchestrator.errors import ConfigError

needs_docker = pytest.mark.skipif(shutil.which("docker") is None, reason="docker not installed")


@needs_docker
def test_an_image_is_required() -> None:
    with pytest.raises(ConfigError) as refused:
        load_client_settings({"EXECUTOR": "docker"})
    assert refused.value.variable == "CONTAINER_IMAGE"


@needs_docker
def test_the_settings_are_read() -> None:
    settings = load_client_settings(
        {
            "EXECUTOR": "docker",
            "CONTAINER_IMAGE": "tool:1",
            "CONTAINER_IMAGES": "tool:*, other/*",
            "CONTAINER_OPTIONS": "--runtime runc --label 'a=b c'",
            "JOB_MAX_CPUS": "1.5",
            "JOB_ENV": "OMP_NUM_THREADS, LANG",
            "CLIENT_ID": "node-1",
        }
    )
    containers = settings.containers
    assert containers.image == "tool:1"
    assert containers.images == ("tool:*", "other/*")
    assert containers.options == ("--runtime", "runc", "--label", "a=b c")
    assert containers.max_cpus == 1.5
    assert containers.env == ("OMP_NUM_THREADS", "LANG")
    assert containers.network == "none"
    assert containers.shm_mb == 256


@needs_docker
@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("CONTAINER_NETWORK", "host"),
        ("CLIENT_ID", "Has Spaces"),
        ("JOB_MAX_CPUS", "0"),
        ("CONTAINER_OPTIONS", "'unclosed"),
        ("SANDBOX", "rlimits"),
    ],
)
def test_bad_values_are_named(variable: str, value: str) -> None:
    with pytest.raises(ConfigError) as refused:
        load_client_settings({"EXECUTOR": "docker", "CONTAINER_IMAGE": "x", variable: value})
    assert refused.value.variable == variable


def test_an_engine_that_is_not_installed_is_named() -> None:
    if shutil.which("podman") is not None:
        pytest.skip("podman is installed")
    with pytest.raises(ConfigError) as refused:
        load_client_settings({"EXECUTOR": "podman", "CONTAINER_IMAGE": "x"})
    assert refused.value.variable == "EXECUTOR"


def test_images_a_server_names_must_match_the_patterns() -> None:
    settings = ContainerSettings(image="tool:1", images=("tool:*",))
    assert ContainerRequest().image_allowed(settings)
    assert ContainerRequest("tool:2").image_allowed(settings)
    assert not ContainerRequest("evil:1").image_allowed(settings)
    assert not ContainerRequest("tool:2").image_allowed(ContainerSettings(image="tool:1"))


@pytest.mark.parametrize(
    "mounts",
    [
        "not json",
        '{"source": "a", "target": "/a"}',
        '[{"source": "../up", "target": "/a"}]',
        '[{"source": "/abs", "target": "/a"}]',
        '[{"source": "a", "target": "relative"}]',
        '[{"source": "a", "target": "/"}]',
        '[{"source": "a", "target": "/proc/x"}]',
        '[{"source": "a", "target": "/work"}]',
        '[{"source": "a,b", "target": "/a"}]',
        '[{"source": "a", "target": "/a", "mode": "ro"}]',
    ],
)
def test_bad_mounts_are_refused(mounts: str) -> None:
    with pytest.raises(ContainerRequestError):
        ContainerRequest.parse({"container_mounts": mounts})


def test_a_mount_source_cannot_leave_the_work_directory(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (tmp_path / "outside").mkdir()
    (work / "link").symlink_to(tmp_path / "outside")
    request = ContainerRequest.parse(
        {"container_mounts": '[{"source": "link", "target": "/data"}]'}
    )
    with pytest.raises(ValueError, match="not a directory of the job"):
        request.mount_options(work)
    made = ContainerRequest.parse({"container_mounts": '[{"source": "out/x", "target": "/o"}]'})
    made.make_sources(work)
    assert made.mount_options(work) == [f"--mount=type=bind,source={work}/out/x,target=/o"]


def test_a_request_survives_on_disk(tmp_path: Path) -> None:
    request = ContainerRequest.parse(
        {"container_image": "tool:2", "container_mounts": '[{"source": "in", "target": "/in"}]'}
    )
    request.write(tmp_path)
    assert ContainerRequest.read(tmp_path) == request
    assert ContainerRequest.read(tmp_path / "none") == ContainerRequest()
