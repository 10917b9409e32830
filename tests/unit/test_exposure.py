"""The start-up warnings (exposure.py): beyond loopback without tokens, no service at all.

Decided on the settings alone, so checked here without binding anything beyond loopback
(the tests never listen on other addresses); tests/acceptance/test_services_and_warnings.py
shows a warning reaching stderr and /status.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from job_orchestrator.config import load_client_settings, load_server_settings
from job_orchestrator.exposure import client_warnings, is_loopback, server_warnings


@pytest.fixture(autouse=True)
def _cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.5", False),
        ("myhost.example", False),
    ],
)
def test_what_counts_as_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_the_default_host_with_no_token_is_warned_about(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("a-token-of-16-chars-at-least 1\n")
    service = {"SERVICE_EX_CLIENTS": "http://127.0.0.1:9000"}
    (open_server,) = [
        w for w in server_warnings(load_server_settings(service)) if "API_TOKENS_FILE" in w
    ]
    assert "0.0.0.0:5000, beyond loopback" in open_server
    assert not [
        w
        for w in server_warnings(load_server_settings({**service, "API_TOKENS_FILE": str(tokens)}))
        if "API_TOKENS_FILE" in w
    ]
    assert server_warnings(load_server_settings({**service, "HOST": "127.0.0.1"})) == []
    # SANDBOX=none without JOB_USERS (the default) is warned about first (sandbox.py).
    shared_uid, open_client = client_warnings(load_client_settings({}))
    assert shared_uid.startswith("SANDBOX=none and no JOB_USERS")
    assert "0.0.0.0:9000, beyond loopback, without CLIENT_TOKEN" in open_client
    assert client_warnings(load_client_settings({"CLIENT_TOKEN": "x" * 20})) == [shared_uid]
    assert client_warnings(load_client_settings({"HOST": "127.0.0.1"})) == [shared_uid]


def test_clients_without_token_are_warned_about_when_the_server_is_exposed() -> None:
    settings = load_server_settings({"SERVICE_EX_CLIENTS": "http://c:9000"})
    assert any("no CLIENT_TOKEN for the clients of ex" in w for w in server_warnings(settings))
    tokened = load_server_settings(
        {"SERVICE_EX_CLIENTS": "http://c:9000", "CLIENT_TOKEN": "t" * 20}
    )
    assert not any("CLIENT_TOKEN" in w for w in server_warnings(tokened))


def test_a_server_without_service_is_warned_about() -> None:
    (warning,) = server_warnings(load_server_settings({"HOST": "127.0.0.1"}))
    assert warning.startswith("no service is configured")
