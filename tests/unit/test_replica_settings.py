"""Replica settings (LEASE_S, REPLICA_ID) and the digest replicas compare their services by."""

from __future__ import annotations

import pytest

from job_orchestrator.config import load_server_settings
from job_orchestrator.errors import ConfigError
from job_orchestrator.server.replicas import services_digest

SERVICE = {"SERVICE_EXAMPLE_CLIENTS": "http://c1:9000,http://c2:9000"}


def test_lease_and_replica_id_defaults() -> None:
    settings = load_server_settings(SERVICE)
    assert settings.lease_s == 15.0
    assert settings.replica_id is None


def test_lease_and_replica_id_are_read() -> None:
    settings = load_server_settings({**SERVICE, "LEASE_S": "4.5", "REPLICA_ID": "web-1"})
    assert settings.lease_s == 4.5
    assert settings.replica_id == "web-1"


@pytest.mark.parametrize("raw", ["0", "-1", "soon"])
def test_a_bad_lease_is_refused(raw: str) -> None:
    with pytest.raises(ConfigError, match="LEASE_S"):
        load_server_settings({**SERVICE, "LEASE_S": raw})


def test_digest_is_stable_and_sees_every_limit() -> None:
    base = load_server_settings(SERVICE).services
    assert services_digest(base) == services_digest(load_server_settings(SERVICE).services)
    for change in (
        {"SERVICE_EXAMPLE_MAX_RUNS": "3"},
        {"SERVICE_EXAMPLE_RUNS_PER_USER": "1"},
        {"SERVICE_EXAMPLE_TIMEOUT": "60"},
        {"SERVICE_EXAMPLE_CLIENTS": "http://c1:9000"},
        {"SERVICE_OTHER_CLIENTS": "http://c3:9000"},
    ):
        changed = load_server_settings({**SERVICE, **change}).services
        assert services_digest(changed) != services_digest(base), change


def test_digest_ignores_what_replicas_may_differ_in() -> None:
    base = load_server_settings(SERVICE).services
    other = load_server_settings({**SERVICE, "PORT": "5001", "LEASE_S": "5"}).services
    assert services_digest(other) == services_digest(base)
