"""Settings from the environment (UPSTREAM §1.2-1.3, §14 "config/loader.rs") and the CLI's
handling of bad settings (SPEC §2: one line naming the variable, exit status 2)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from job_orchestrator import __version__
from job_orchestrator.config import (
    DEFAULT_MAX_AGE_S,
    DEFAULT_MAX_RUNS,
    DEFAULT_RUNS_PER_USER,
    NodeConfig,
    ServerSettings,
    ServiceConfig,
    derive_partial_url,
    load_client_settings,
    load_server_settings,
)
from job_orchestrator.errors import ConfigError


@pytest.fixture(autouse=True)
def _cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Defaults are relative to the current directory.
    monkeypatch.chdir(tmp_path)


def service_env(name: str, base: str = "http://c:9000", **extra: str) -> dict[str, str]:
    env = {
        f"SERVICE_{name}_UPLOAD_URL": f"{base}/submit",
        f"SERVICE_{name}_DOWNLOAD_URL": f"{base}/retrieve",
        f"SERVICE_{name}_TERMINATE_URL": f"{base}/kill",
    }
    env.update({f"SERVICE_{name}_{key}": value for key, value in extra.items()})
    return env


def only_node(service: ServiceConfig) -> NodeConfig:
    assert len(service.nodes) == 1
    return service.nodes[0]


# --- defaults ---------------------------------------------------------------------------------


def test_server_defaults(tmp_path: Path) -> None:
    settings = load_server_settings({})
    assert settings.port == 5000
    assert settings.max_age_s == DEFAULT_MAX_AGE_S == 864000
    assert settings.data_path == tmp_path / "data"
    assert settings.data_path.is_absolute()
    assert Path(settings.db_path) == tmp_path / "db.sqlite"
    assert settings.log_level == "INFO"
    assert settings.host == "0.0.0.0"
    assert settings.services == {}


def test_client_defaults(tmp_path: Path) -> None:
    settings = load_client_settings({})
    assert settings.port == 9000  # the seed's default, not upstream's 5000
    assert settings.max_age_s == 864000
    assert settings.data_path == tmp_path / "data"
    assert settings.log_level == "INFO"
    assert settings.max_concurrent is None
    assert settings.require_exit_trap is False


def test_service_defaults() -> None:
    settings = load_server_settings(service_env("FOO"))
    foo = settings.services["foo"]
    assert foo.runs_per_user == DEFAULT_RUNS_PER_USER == 5
    assert foo.max_runs == DEFAULT_MAX_RUNS == 10
    assert foo.timeout_s is None
    assert foo.client_token is None


def test_client_ignores_services() -> None:
    settings = load_client_settings({**service_env("FOO"), "PORT": "9100"})
    assert settings.port == 9100
    assert not hasattr(settings, "services")


# --- upstream config/loader.rs ----------------------------------------------------------------


def test_service_creation() -> None:
    node = NodeConfig("http://c/submit", "http://c/retrieve", "http://c/kill")
    service = ServiceConfig(name="svc", nodes=(node,), runs_per_user=7, max_runs=3)
    assert service.name == "svc"
    assert service.nodes[0].upload_url == "http://c/submit"
    assert service.nodes[0].download_url == "http://c/retrieve"
    assert service.nodes[0].terminate_url == "http://c/kill"
    assert service.runs_per_user == 7
    assert service.max_runs == 3


def test_get_urls_existing_nonexistent_and_empty_service_name() -> None:
    services = load_server_settings(service_env("EXAMPLE")).services
    example = only_node(services["example"])
    assert example.download_url == "http://c:9000/retrieve"
    assert example.upload_url == "http://c:9000/submit"
    assert services.get("nonexistent") is None
    assert services.get("") is None


def test_config_structure(tmp_path: Path) -> None:
    node = NodeConfig("http://c/submit", "http://c/retrieve", "http://c/kill")
    settings = ServerSettings(
        port=5000,
        host="0.0.0.0",
        data_path=tmp_path / "data",
        max_age_s=3600,
        log_level="INFO",
        db_path=str(tmp_path / "db.sqlite"),
        services={"svc": ServiceConfig(name="svc", nodes=(node,))},
    )
    assert settings.max_age_s == 3600
    assert settings.data_path == tmp_path / "data"
    assert settings.db_path == str(tmp_path / "db.sqlite")
    assert list(settings.services) == ["svc"]


def test_config_new_with_service_env() -> None:
    env = {
        "SERVICE_FOO_UPLOAD_URL": "http://foo:9000/submit",
        "SERVICE_FOO_DOWNLOAD_URL": "http://foo:9000/retrieve",
        "SERVICE_FOO_TERMINATE_URL": "http://foo:9000/kill",
        "SERVICE_FOO_RUNS_PER_USER": "3",
        "SERVICE_FOO_MAX_RUNS": "2",
    }
    services = load_server_settings(env).services
    assert list(services) == ["foo"]
    foo = services["foo"]
    assert foo.name == "foo"
    assert foo.runs_per_user == 3
    assert foo.max_runs == 2
    assert foo.nodes == (
        NodeConfig(
            upload_url="http://foo:9000/submit",
            download_url="http://foo:9000/retrieve",
            terminate_url="http://foo:9000/kill",
        ),
    )


def test_config_multiple_services() -> None:
    env = {**service_env("BAR", "http://bar:9000"), **service_env("BAZ", "http://baz:9001")}
    services = load_server_settings(env).services
    assert sorted(services) == ["bar", "baz"]
    assert only_node(services["bar"]).upload_url == "http://bar:9000/submit"
    assert only_node(services["baz"]).download_url == "http://baz:9001/retrieve"


def test_config_new_service_name_lowercase() -> None:
    services = load_server_settings(service_env("UPPERCASE")).services
    assert list(services) == ["uppercase"]
    assert services["uppercase"].name == "uppercase"


def test_service_name_mixed_case_is_lowered() -> None:
    assert list(load_server_settings(service_env("MiXeD")).services) == ["mixed"]


def test_config_new_custom_port() -> None:
    assert load_server_settings({"PORT": "8080"}).port == 8080
    assert load_client_settings({"PORT": "8080"}).port == 8080


def test_config_new_custom_max_age() -> None:
    assert load_server_settings({"MAX_AGE": "3600"}).max_age_s == 3600
    assert load_client_settings({"MAX_AGE": "0"}).max_age_s == 0


def test_config_new_custom_db_path() -> None:
    assert load_server_settings({"DB_PATH": "/tmp/custom.db"}).db_path == "/tmp/custom.db"


def test_config_new_custom_data_path() -> None:
    assert load_server_settings({"DATA_PATH": "/tmp/custom_data"}).data_path == Path(
        "/tmp/custom_data"
    )
    assert load_client_settings({"DATA_PATH": "/tmp/x/data"}).data_path == Path("/tmp/x/data")


@pytest.mark.parametrize(("raw", "value"), [("+5", 5), ("0", 0), ("65535", 65535), ("007", 7)])
def test_port_accepts_what_rust_u16_accepts(raw: str, value: int) -> None:
    assert load_server_settings({"PORT": raw}).port == value


def test_max_age_accepts_plus_and_large_values() -> None:
    assert load_server_settings({"MAX_AGE": "+5"}).max_age_s == 5
    assert load_server_settings({"MAX_AGE": str(2**64 - 1)}).max_age_s == 2**64 - 1


def test_runs_per_user_and_max_runs_accept_plus() -> None:
    foo = load_server_settings(service_env("FOO", RUNS_PER_USER="+3", MAX_RUNS="0")).services["foo"]
    assert (foo.runs_per_user, foo.max_runs) == (3, 0)


def test_log_level_is_case_insensitive() -> None:
    assert load_server_settings({"LOG_LEVEL": "debug"}).log_level == "DEBUG"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("1", True), ("true", True), ("YES", True), ("0", False), ("false", False), ("", False)],
)
def test_require_exit_trap(raw: str, expected: bool) -> None:
    assert load_client_settings({"REQUIRE_EXIT_TRAP": raw}).require_exit_trap is expected


# --- deliberate fixes to service discovery ---------------------------------------------------


def test_service_name_with_underscores() -> None:
    env = {
        "SERVICE_MY_APP_UPLOAD_URL": "http://c/submit",
        "SERVICE_MY_APP_DOWNLOAD_URL": "http://c/retrieve",
        "SERVICE_MY_APP_TERMINATE_URL": "http://c/kill",
        "SERVICE_MY_APP_RUNS_PER_USER": "2",
        "SERVICE_MY_APP_MAX_RUNS": "4",
    }
    services = load_server_settings(env).services
    assert list(services) == ["my_app"]
    my_app = services["my_app"]
    assert only_node(my_app).upload_url == "http://c/submit"
    assert (my_app.runs_per_user, my_app.max_runs) == (2, 4)


def test_unknown_suffixes_are_ignored_not_half_configured() -> None:
    env = {
        "SERVICE_X_WHATEVER": "1",
        "SERVICE_HOST": "example",
        "SERVICE_": "",
        "SERVICE__UPLOAD_URL": "http://c/submit",
        "SERVICE_FOO_URL": "http://c",
        **service_env("GOOD", FLAVOUR="vanilla"),
    }
    services = load_server_settings(env).services
    assert list(services) == ["good"]
    assert only_node(services["good"]).upload_url == "http://c:9000/submit"


def test_prefix_is_case_sensitive() -> None:
    env = {key.lower(): value for key, value in service_env("FOO").items()}
    assert load_server_settings(env).services == {}


def test_service_with_only_runs_per_user_is_ignored() -> None:
    assert load_server_settings({"SERVICE_LONELY_RUNS_PER_USER": "3"}).services == {}


def test_service_needs_upload_and_download() -> None:
    env = {
        "SERVICE_UP_UPLOAD_URL": "http://c/submit",
        "SERVICE_DOWN_DOWNLOAD_URL": "http://c/retrieve",
        "SERVICE_KILL_TERMINATE_URL": "http://c/kill",
    }
    assert load_server_settings(env).services == {}


def test_terminate_url_derived_when_missing() -> None:
    env = {
        "SERVICE_FOO_UPLOAD_URL": "http://c:9000/submit",
        "SERVICE_FOO_DOWNLOAD_URL": "http://c:9000/retrieve",
    }
    node = only_node(load_server_settings(env).services["foo"])
    assert node.upload_url == "http://c:9000/submit"
    assert node.download_url == "http://c:9000/retrieve"
    assert node.terminate_url == "http://c:9000/kill"


def test_clients_list_gives_one_node_per_client() -> None:
    env = {"SERVICE_X_CLIENTS": "http://a:9000,http://b:9000/"}
    x = load_server_settings(env).services["x"]
    assert x.nodes == (
        NodeConfig("http://a:9000/submit", "http://a:9000/retrieve", "http://a:9000/kill"),
        NodeConfig("http://b:9000/submit", "http://b:9000/retrieve", "http://b:9000/kill"),
    )
    assert [node.partial_url for node in x.nodes] == [
        "http://a:9000/retrieve_partial",
        "http://b:9000/retrieve_partial",
    ]
    assert (x.runs_per_user, x.max_runs) == (5, 10)


def test_clients_list_tolerates_spaces_and_empty_items() -> None:
    x = load_server_settings({"SERVICE_X_CLIENTS": " http://a:9000 , ,https://b/ "}).services["x"]
    assert [node.upload_url for node in x.nodes] == ["http://a:9000/submit", "https://b/submit"]


def test_comma_lists_in_url_variables() -> None:
    env = {
        "SERVICE_X_UPLOAD_URL": "http://a/submit,http://b/submit",
        "SERVICE_X_DOWNLOAD_URL": "http://a/retrieve,http://b/retrieve",
        "SERVICE_X_TERMINATE_URL": "http://a/kill,http://b/kill",
    }
    x = load_server_settings(env).services["x"]
    assert x.nodes == (
        NodeConfig("http://a/submit", "http://a/retrieve", "http://a/kill"),
        NodeConfig("http://b/submit", "http://b/retrieve", "http://b/kill"),
    )


@pytest.mark.parametrize(
    "env",
    [
        {
            "SERVICE_X_UPLOAD_URL": "http://a/submit,http://b/submit",
            "SERVICE_X_DOWNLOAD_URL": "http://a/retrieve",
        },
        {
            "SERVICE_X_UPLOAD_URL": "http://a/submit",
            "SERVICE_X_DOWNLOAD_URL": "http://a/retrieve,http://b/retrieve",
            "SERVICE_X_TERMINATE_URL": "http://a/kill,http://b/kill",
        },
        {
            "SERVICE_X_UPLOAD_URL": "http://a/submit,http://b/submit",
            "SERVICE_X_DOWNLOAD_URL": "http://a/retrieve,http://b/retrieve",
            "SERVICE_X_TERMINATE_URL": "http://a/kill",
        },
    ],
)
def test_mismatched_url_list_lengths(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError) as caught:
        load_server_settings(env)
    assert caught.value.variable.startswith("SERVICE_X_")
    assert caught.value.variable in env


# --- bad values --------------------------------------------------------------------------------


Loader = Callable[[Mapping[str, str]], Any]


def _error(loader: Loader, env: dict[str, str]) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        loader(env)
    return caught.value


@pytest.mark.parametrize("raw", ["abc", "70000", "65536", " 1", "1 ", "-1", "", "1.5", "0x10"])
@pytest.mark.parametrize("loader", [load_server_settings, load_client_settings])
def test_bad_port(loader: Loader, raw: str) -> None:
    error = _error(loader, {"PORT": raw})
    assert error.variable == "PORT"
    assert "PORT" in str(error)


@pytest.mark.parametrize("raw", ["1h", "", "-1", " 10", "1e3", str(2**64)])
@pytest.mark.parametrize("loader", [load_server_settings, load_client_settings])
def test_bad_max_age(loader: Loader, raw: str) -> None:
    assert _error(loader, {"MAX_AGE": raw}).variable == "MAX_AGE"


@pytest.mark.parametrize(
    ("suffix", "raw"),
    [("RUNS_PER_USER", "x"), ("RUNS_PER_USER", "-1"), ("MAX_RUNS", "70000"), ("MAX_RUNS", "")],
)
def test_bad_service_counts(suffix: str, raw: str) -> None:
    env = service_env("FOO", **{suffix: raw})
    assert _error(load_server_settings, env).variable == f"SERVICE_FOO_{suffix}"


@pytest.mark.parametrize("suffix", ["UPLOAD_URL", "DOWNLOAD_URL", "TERMINATE_URL", "CLIENTS"])
@pytest.mark.parametrize("raw", ["ftp://x", "c:9000/submit", "", " , "])
def test_bad_urls(suffix: str, raw: str) -> None:
    env = {**service_env("FOO"), f"SERVICE_FOO_{suffix}": raw}
    assert _error(load_server_settings, env).variable == f"SERVICE_FOO_{suffix}"


@pytest.mark.parametrize("loader", [load_server_settings, load_client_settings])
def test_bad_log_level(loader: Loader) -> None:
    error = _error(loader, {"LOG_LEVEL": "LOUD"})
    assert error.variable == "LOG_LEVEL"


@pytest.mark.parametrize("loader", [load_server_settings, load_client_settings])
def test_log_format(loader: Loader) -> None:
    assert loader({}).log_format == "text"
    assert loader({"LOG_FORMAT": "JSON"}).log_format == "json"
    assert _error(loader, {"LOG_FORMAT": "xml"}).variable == "LOG_FORMAT"


def test_metrics_token() -> None:
    assert load_server_settings({}).metrics_token is None
    assert load_server_settings({"METRICS_TOKEN": "m"}).metrics_token == "m"


def test_bad_require_exit_trap() -> None:
    assert _error(load_client_settings, {"REQUIRE_EXIT_TRAP": "maybe"}).variable == (
        "REQUIRE_EXIT_TRAP"
    )


def test_bad_max_concurrent() -> None:
    assert _error(load_client_settings, {"MAX_CONCURRENT": "x"}).variable == "MAX_CONCURRENT"


def test_config_error_message_names_the_variable() -> None:
    error = ConfigError("PORT", "bad")
    assert error.variable == "PORT"
    assert str(error).startswith("PORT")


# --- partial URL (UPSTREAM §3.4) ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("download", "partial"),
    [
        ("http://c:9000/retrieve", "http://c:9000/retrieve_partial"),
        ("http://c/download", "http://c/retrieve_partial"),
        ("http://c/retrieve/", "http://c/retrieve/retrieve_partial"),
        ("retrieve", "retrieve/retrieve_partial"),
        ("http://c:9000/api/v1/retrieve", "http://c:9000/api/v1/retrieve_partial"),
    ],
)
def test_derive_partial_url(download: str, partial: str) -> None:
    assert derive_partial_url(download) == partial
    assert NodeConfig("http://c/submit", download, "http://c/kill").partial_url == partial


# --- command line --------------------------------------------------------------------------------

_OUR_VARIABLES = {
    "PORT",
    "HOST",
    "MAX_AGE",
    "DB_PATH",
    "DATA_PATH",
    "LOG_LEVEL",
    "MAX_CONCURRENT",
    "REQUIRE_EXIT_TRAP",
}


def run_cli(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {
        key: value
        for key, value in os.environ.items()
        if key not in _OUR_VARIABLES and not key.startswith("SERVICE_")
    }
    clean.update(DB_PATH=str(tmp_path / "db.sqlite"), DATA_PATH=str(tmp_path / "data"))
    clean.update(env)
    return subprocess.run(
        [sys.executable, "-m", "job_orchestrator", *args],
        env=clean,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_cli_version_ignores_a_bad_environment(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "--version", PORT="abc", MAX_AGE="1h")
    assert result.returncode == 0, result.stderr
    assert __version__ in result.stdout
    assert "job-orchestrator" in result.stdout
    assert "Traceback" not in result.stderr


def test_cli_help(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "--help", PORT="abc")
    assert result.returncode == 0, result.stderr
    assert "server" in result.stdout
    assert "client" in result.stdout


def test_cli_needs_a_subcommand(tmp_path: Path) -> None:
    result = run_cli(tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr


def test_cli_unknown_subcommand(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "launch")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr


def test_cli_server_bad_port(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "server", PORT="abc")
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "PORT" in lines[0]
    assert "Traceback" not in result.stderr + result.stdout


def test_cli_client_bad_max_concurrent(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "client", MAX_CONCURRENT="x")
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "MAX_CONCURRENT" in lines[0]
    assert "Traceback" not in result.stderr + result.stdout


def test_cli_server_bad_service_url(tmp_path: Path) -> None:
    result = run_cli(
        tmp_path,
        "server",
        SERVICE_FOO_UPLOAD_URL="ftp://x",
        SERVICE_FOO_DOWNLOAD_URL="http://c/retrieve",
    )
    assert result.returncode == 2
    assert "SERVICE_FOO_UPLOAD_URL" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_cli_bad_setting_is_the_only_stderr_line_despite_warnings(tmp_path: Path) -> None:
    result = run_cli(
        tmp_path,
        "server",
        SERVICE_X_WHATEVER="1",
        SERVICE_FOO_UPLOAD_URL="ftp://x",
        SERVICE_FOO_DOWNLOAD_URL="http://c/retrieve",
    )
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1, result.stderr


def test_admin_users_are_a_list_of_user_ids() -> None:
    assert load_server_settings({}).admin_users == frozenset()
    assert load_server_settings({"ADMIN_USERS": "1, -2,3,1"}).admin_users == {1, -2, 3}


@pytest.mark.parametrize("raw", ["x", "1,,2", "1;2", "99999999999"])
def test_bad_admin_users_name_the_setting(raw: str) -> None:
    with pytest.raises(ConfigError, match="ADMIN_USERS"):
        load_server_settings({"ADMIN_USERS": raw})


# --- secrets given as files (`<NAME>_FILE`) ---------------------------------------------------

SECRET = "s3cret-value-0123456789abcdef"
#: (loader, variable, where the loaded settings keep it) for every secret with a `_FILE` form.
_SECRETS: list[tuple[Callable[[Mapping[str, str]], Any], str, Callable[[Any], object]]] = [
    (load_client_settings, "CLIENT_TOKEN", lambda s: s.client_token),
    (load_server_settings, "CLIENT_TOKEN", lambda s: s.services["foo"].client_token),
    (load_server_settings, "SERVICE_FOO_CLIENT_TOKEN", lambda s: s.services["foo"].client_token),
    (load_server_settings, "CALLBACK_SECRET", lambda s: s.callback_secret),
    (load_server_settings, "METRICS_TOKEN", lambda s: s.metrics_token),
    (load_server_settings, "DB_PATH", lambda s: s.db_path),
]
_SECRET_IDS = [f"{loader.__name__.split('_')[1]}-{name}" for loader, name, _ in _SECRETS]


def secret_file(tmp_path: Path, content: str | bytes, name: str = "secret") -> Path:
    path = tmp_path / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


@pytest.mark.parametrize(("loader", "variable", "kept"), _SECRETS, ids=_SECRET_IDS)
@pytest.mark.parametrize("ending", ["", "\n", "\r\n", "\n\n"])
def test_a_secret_is_read_from_its_file_without_the_trailing_newline(
    tmp_path: Path,
    loader: Callable[[Mapping[str, str]], Any],
    variable: str,
    kept: Callable[[Any], object],
    ending: str,
) -> None:
    path = secret_file(tmp_path, f"{SECRET}{ending}")
    settings = loader({**service_env("FOO"), f"{variable}_FILE": str(path)})
    assert kept(settings) == SECRET
    # The same value as given directly.
    assert kept(loader({**service_env("FOO"), variable: SECRET})) == SECRET


@pytest.mark.parametrize(("loader", "variable", "kept"), _SECRETS, ids=_SECRET_IDS)
def test_a_secret_given_twice_is_refused_without_showing_it(
    tmp_path: Path,
    loader: Callable[[Mapping[str, str]], Any],
    variable: str,
    kept: Callable[[Any], object],
) -> None:
    path = secret_file(tmp_path, SECRET)
    env = {**service_env("FOO"), variable: SECRET, f"{variable}_FILE": str(path)}
    with pytest.raises(ConfigError) as raised:
        loader(env)
    assert raised.value.variable == f"{variable}_FILE"
    assert variable in str(raised.value)
    assert SECRET not in str(raised.value)


@pytest.mark.parametrize(("loader", "variable", "kept"), _SECRETS, ids=_SECRET_IDS)
@pytest.mark.parametrize(
    ("content", "problem"),
    [(None, "No such file"), ("", "is empty"), ("\n", "is empty"), ("dir", "Is a directory")],
)
def test_a_missing_empty_or_unreadable_secret_file_names_the_variable(
    tmp_path: Path,
    loader: Callable[[Mapping[str, str]], Any],
    variable: str,
    kept: Callable[[Any], object],
    content: str | None,
    problem: str,
) -> None:
    path = tmp_path / "secret"
    if content == "dir":
        path.mkdir()
    elif content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError, match=problem) as raised:
        loader({**service_env("FOO"), f"{variable}_FILE": str(path)})
    assert raised.value.variable == f"{variable}_FILE"


def test_a_secret_file_that_is_not_a_secret_is_refused(tmp_path: Path) -> None:
    huge = secret_file(tmp_path, "x" * (64 * 1024 + 1))
    with pytest.raises(ConfigError, match="larger than"):
        load_client_settings({"CLIENT_TOKEN_FILE": str(huge)})
    binary = secret_file(tmp_path, b"\xff\xfe", name="binary")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_client_settings({"CLIENT_TOKEN_FILE": str(binary)})


def test_a_service_token_file_wins_over_the_global_token(tmp_path: Path) -> None:
    path = secret_file(tmp_path, "service-token\n")
    env = {
        **service_env("FOO"),
        **service_env("BAR", CLIENT_TOKEN_FILE=str(path)),
        **service_env("NONE", CLIENT_TOKEN=""),
        "CLIENT_TOKEN_FILE": str(secret_file(tmp_path, "global-token\n", name="global")),
    }
    services = load_server_settings(env).services
    assert services["foo"].client_token == "global-token"
    assert services["bar"].client_token == "service-token"
    # An empty service token still means "no token for this service", as before.
    assert services["none"].client_token is None


def test_a_short_callback_secret_file_names_the_file_variable(tmp_path: Path) -> None:
    path = secret_file(tmp_path, "short\n")
    with pytest.raises(ConfigError, match="at least 16") as raised:
        load_server_settings({"CALLBACK_SECRET_FILE": str(path)})
    assert raised.value.variable == "CALLBACK_SECRET_FILE"


@pytest.mark.parametrize("command", ["server", "client", "migrate"])
def test_cli_refuses_a_secret_given_twice_in_one_line_without_showing_it(
    tmp_path: Path, command: str
) -> None:
    path = secret_file(tmp_path, SECRET)
    variable = "DB_PATH" if command == "migrate" else "CLIENT_TOKEN"
    result = run_cli(tmp_path, command, **{variable: SECRET, f"{variable}_FILE": str(path)})
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.splitlines()
    assert f"{variable}_FILE" in line
    assert SECRET not in result.stderr + result.stdout
