"""JOB_USERS, JOB_USER and the refusal of SANDBOX=rlimits with the client's own uid."""

from __future__ import annotations

import os
import shutil

import pytest

from job_orchestrator.client.sandbox import shared_uid_warning
from job_orchestrator.config import load_client_settings
from job_orchestrator.errors import ConfigError

as_root = pytest.mark.skipif(os.geteuid() != 0, reason="JOB_USERS needs a root client")


def test_rlimits_without_a_job_user_is_refused_naming_the_settings() -> None:
    with pytest.raises(ConfigError) as refused:
        load_client_settings({"SANDBOX": "rlimits"})
    assert refused.value.variable == "SANDBOX"
    message = str(refused.value)
    assert "\n" not in message
    assert "JOB_USERS" in message
    assert "JOB_USER " in message
    assert "CLIENT_TOKEN" in message


def test_a_bad_limit_is_named_before_the_missing_job_user() -> None:
    with pytest.raises(ConfigError) as refused:
        load_client_settings({"SANDBOX": "rlimits", "JOB_MAX_MEMORY_MB": "0"})
    assert refused.value.variable == "JOB_MAX_MEMORY_MB"


@pytest.mark.skipif(shutil.which("bwrap") is None, reason="bwrap not installed")
def test_bwrap_without_a_job_user_stays_allowed() -> None:
    settings = load_client_settings({"SANDBOX": "bwrap"})
    assert settings.job_user is None
    assert settings.job_users is None
    assert shared_uid_warning(settings) is None


def test_sandbox_none_without_a_job_user_warns() -> None:
    warning = shared_uid_warning(load_client_settings({}))
    assert warning is not None
    assert "CLIENT_TOKEN" in warning
    assert "JOB_USERS" in warning


@as_root
def test_job_users_is_a_range() -> None:
    settings = load_client_settings({"JOB_USERS": " 70000 - 70009 ", "SANDBOX": "rlimits"})
    assert settings.job_users == (70000, 70009)
    assert shared_uid_warning(settings) is None


@as_root
@pytest.mark.parametrize(
    "value",
    ["70000", "70009-70000", "0-10", "a-b", "70000-", "-5-10", "1-4294967295", "1-70000"],
)
def test_bad_job_users_are_refused(value: str) -> None:
    with pytest.raises(ConfigError) as refused:
        load_client_settings({"JOB_USERS": value})
    assert refused.value.variable == "JOB_USERS"


@as_root
def test_job_users_and_job_user_are_exclusive() -> None:
    with pytest.raises(ConfigError) as refused:
        load_client_settings({"JOB_USERS": "70000-70009", "JOB_USER": "nobody"})
    assert refused.value.variable in {"JOB_USERS", "JOB_USER"}


@pytest.mark.skipif(os.geteuid() == 0, reason="checks the refusal of a client that is not root")
def test_job_users_needs_a_root_client() -> None:
    with pytest.raises(ConfigError) as refused:
        load_client_settings({"JOB_USERS": "70000-70009"})
    assert refused.value.variable == "JOB_USERS"
