"""Schemathesis against the live OpenAPI documents of the server and of the client.

Each operation of `/api-docs/openapi.json` is fuzzed with a bounded number of generated
requests against real processes on 127.0.0.1 (and never anywhere else: the session ignores
proxy settings and every request's host is checked). The checks are the ones that hold an
implementation to its document: no 5xx, documented status codes, content types, headers and
body schemas. Semantic checks (`positive_data_acceptance` expects any schema-valid request to
succeed, which a `service` the server does not run or an id that does not exist cannot) are
left out on purpose.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from testkit.harness import Cluster, cluster

MAX_EXAMPLES = 25
FINAL = ("Completed", "Failed", "Invalid", "Killed", "Cleaned")
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
USER_ID = 424242
USER_TOKEN = f"fuzz-user-{secrets.token_hex(16)}"
CLIENT_TOKEN = f"fuzz-client-{secrets.token_hex(16)}"

SERVER_OPERATIONS = [
    ("GET", "/"),
    ("GET", "/health"),
    ("POST", "/upload"),
    ("GET", "/download/{id}"),
    ("GET", "/download_partial/{id}"),
    ("POST", "/terminate/{id}"),
    ("GET", "/metrics"),
    ("GET", "/jobs/{id}"),
    ("GET", "/jobs"),
    ("GET", "/jobs/{id}/logs"),
    ("GET", "/services"),
]
CLIENT_OPERATIONS = [
    ("GET", "/"),
    ("GET", "/health"),
    ("GET", "/load"),
    ("POST", "/submit"),
    ("GET", "/retrieve/{id}"),
    ("GET", "/retrieve_partial/{id}"),
    ("POST", "/kill/{id}"),
    ("GET", "/metrics"),
    ("GET", "/logs/{id}"),
    ("GET", "/changes"),
]


# ---- infrastructure ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def session() -> Iterator[requests.Session]:
    """HTTP for the fuzzer: loopback only, whatever HTTP(S)_PROXY the environment holds."""
    with requests.Session() as http:
        http.trust_env = False
        yield http


@pytest.fixture(scope="module")
def no_proxy() -> Iterator[None]:
    # from_url() fetches the document with plain requests.get, which reads the environment.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("NO_PROXY", "127.0.0.1")
        patch.setenv("no_proxy", "127.0.0.1")
        for variable in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
            patch.delenv(variable, raising=False)
        yield


def load_schema(base_url: str, headers: dict[str, str] | None = None) -> Any:
    assert urlsplit(base_url).hostname == "127.0.0.1"
    return schemathesis.openapi.from_url(
        f"{base_url}/api-docs/openapi.json", headers=headers or {}, timeout=30
    )


def operations_of(schema: Any) -> list[tuple[str, str]]:
    found = []
    for result in schema.get_all_operations():
        operation = result.ok()
        found.append((operation.method.upper(), operation.path))
    return sorted(found)


def fuzz(
    schema: Any,
    method: str,
    path: str,
    mode: GenerationMode,
    session: requests.Session,
    headers: dict[str, str] | None = None,
) -> int:
    """Run MAX_EXAMPLES generated requests of one operation; return how many were sent."""
    operation = schema[path][method]
    sent = 0

    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: schemathesis.Case) -> None:
        nonlocal sent
        response = case.call_and_validate(
            session=session, headers=headers, checks=CHECKS, timeout=120
        )
        sent += 1
        assert urlsplit(response.request.url).hostname == "127.0.0.1", response.request.url

    run()
    return sent


def seed_jobs(cl: Cluster) -> dict[str, int]:
    """A few finished jobs, so that some generated ids exist (none left running)."""
    api = cl.api
    jobs = {
        "completed": api.submit("echo ok > out.txt\n"),
        "failed": api.submit("echo partial > partial.txt\nexit 3\n"),
    }
    upload = api.upload({"data.txt": "no run.sh here"})
    assert upload.status_code == 201
    jobs["invalid"] = upload.json()["id"]
    expected = {"completed": "Completed", "failed": "Failed", "invalid": "Invalid"}
    for name, job_id in jobs.items():
        assert api.wait_for(job_id, *FINAL)["status"] == expected[name]
    return jobs


@pytest.fixture(scope="module")
def fuzzed(no_proxy: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with cluster(tmp_path_factory.mktemp("fuzz")) as running:
        seed_jobs(running)
        yield running


@pytest.fixture(scope="module")
def server_schema(fuzzed: Cluster) -> Any:
    assert fuzzed.server is not None
    return load_schema(fuzzed.server.url)


@pytest.fixture(scope="module")
def client_schema(fuzzed: Cluster) -> Any:
    return load_schema(fuzzed.clients[0].url)


def doc_bug(reason: str) -> pytest.MarkDecorator:
    """Expected to fail on a check (schemathesis' FailureGroup, possibly grouped by hypothesis)."""
    return pytest.mark.xfail(strict=True, reason=reason, raises=BaseExceptionGroup)


def params(
    operations: list[tuple[str, str]], xfail: dict[tuple[str, str], str] | None = None
) -> list[Any]:
    marks = xfail or {}
    return [
        pytest.param(
            method,
            path,
            id=f"{method} {path}",
            marks=[doc_bug(marks[(method, path)])] if (method, path) in marks else [],
        )
        for method, path in operations
    ]


# ---- the documents list every route -------------------------------------------------------------


def test_server_document_lists_every_route(server_schema: Any) -> None:
    assert operations_of(server_schema) == sorted(SERVER_OPERATIONS)


def test_client_document_lists_every_route(client_schema: Any) -> None:
    assert operations_of(client_schema) == sorted(CLIENT_OPERATIONS)


# ---- the server ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path"), params(SERVER_OPERATIONS))
def test_server_conforms_to_its_document(
    server_schema: Any, session: requests.Session, method: str, path: str
) -> None:
    assert fuzz(server_schema, method, path, GenerationMode.POSITIVE, session) > 0


def test_server_upload_rejects_schema_violations_cleanly(
    server_schema: Any, session: requests.Session
) -> None:
    assert fuzz(server_schema, "POST", "/upload", GenerationMode.NEGATIVE, session) > 0


@pytest.mark.parametrize("job", ["completed", "failed", "invalid", "missing", "not-a-number"])
@pytest.mark.parametrize(("method", "path"), [op for op in SERVER_OPERATIONS if "{id}" in op[1]])
def test_server_known_ids_conform(
    fuzzed: Cluster,
    server_schema: Any,
    session: requests.Session,
    method: str,
    path: str,
    job: str,
) -> None:
    """Generated ids rarely exist; these do (terminate comes last, on finished jobs: 409)."""
    ids = {"completed": 1, "failed": 2, "invalid": 3, "missing": 4_000_000_000}
    job_id = str(ids[job]) if job in ids else "1e3"
    case = server_schema[path][method].Case(path_parameters={"id": job_id})
    response = case.call_and_validate(session=session, checks=CHECKS, timeout=60)
    assert urlsplit(response.request.url).hostname == "127.0.0.1"
    expected = {"missing": 404, "not-a-number": 400}.get(job)
    if expected is None and method == "POST":
        expected = 409  # /terminate of a finished job
    assert response.status_code == (expected or 200)


@pytest.mark.parametrize(("method", "path"), [op for op in SERVER_OPERATIONS if "{id}" in op[1]])
def test_server_ids_reject_schema_violations_cleanly(
    server_schema: Any, session: requests.Session, method: str, path: str
) -> None:
    """Ids that are not a u32 get the documented 400, never 422 (the parameter is an integer)."""
    assert fuzz(server_schema, method, path, GenerationMode.NEGATIVE, session) > 0


# ---- the client ----------------------------------------------------------------------------------

CLIENT_XFAIL: dict[tuple[str, str], str] = {}


@pytest.mark.parametrize(("method", "path"), params(CLIENT_OPERATIONS, CLIENT_XFAIL))
def test_client_conforms_to_its_document(
    client_schema: Any, session: requests.Session, method: str, path: str
) -> None:
    assert fuzz(client_schema, method, path, GenerationMode.POSITIVE, session) > 0


def test_client_retrieve_rejects_schema_violations_cleanly(
    client_schema: Any, session: requests.Session
) -> None:
    fuzz(client_schema, "GET", "/retrieve/{id}", GenerationMode.NEGATIVE, session)


def test_client_result_of_a_completed_payload_conforms(
    client_schema: Any, session: requests.Session
) -> None:
    # Payload 1 is the server's Completed job: /retrieve answers its ZIP.
    case = client_schema["/retrieve/{id}"]["GET"].Case(path_parameters={"id": "1"})
    case.call_and_validate(session=session, checks=CHECKS, timeout=60)


# ---- with authentication on ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def guarded(no_proxy: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("fuzz-auth")
    tokens = root / "tokens.txt"
    tokens.write_text(f"{USER_TOKEN} {USER_ID}\n")
    with cluster(
        root,
        client_env={"CLIENT_TOKEN": CLIENT_TOKEN},
        server_env={"API_TOKENS_FILE": str(tokens), "CLIENT_TOKEN": CLIENT_TOKEN},
    ) as running:
        yield running


@pytest.fixture(scope="module")
def guarded_server_schema(guarded: Cluster) -> Any:
    assert guarded.server is not None
    return load_schema(guarded.server.url)


@pytest.mark.parametrize(("method", "path"), params(SERVER_OPERATIONS))
def test_server_with_user_tokens_conforms_without_a_token(
    guarded_server_schema: Any, session: requests.Session, method: str, path: str
) -> None:
    fuzz(guarded_server_schema, method, path, GenerationMode.POSITIVE, session)


@pytest.mark.parametrize(
    ("method", "path"),
    params(SERVER_OPERATIONS),
)
def test_server_with_user_tokens_conforms_with_a_token(
    guarded_server_schema: Any, session: requests.Session, method: str, path: str
) -> None:
    headers = {"Authorization": f"Bearer {USER_TOKEN}"}
    fuzz(guarded_server_schema, method, path, GenerationMode.POSITIVE, session, headers)


@pytest.mark.parametrize(
    ("method", "path"),
    params(
        [op for op in CLIENT_OPERATIONS if op[0] == "GET" and "{" not in op[1]],
        {},
    ),
)
def test_guarded_client_conforms_without_a_token(
    guarded: Cluster, session: requests.Session, method: str, path: str
) -> None:
    headers = {"Authorization": f"Bearer {CLIENT_TOKEN}"}  # only to read the document
    schema = load_schema(guarded.clients[0].url, headers)
    fuzz(schema, method, path, GenerationMode.POSITIVE, session)


def test_documents_never_leak_tokens(guarded: Cluster, session: requests.Session) -> None:
    assert guarded.server is not None
    documents = [
        session.get(f"{guarded.server.url}/api-docs/openapi.json", timeout=30).text,
        session.get(
            f"{guarded.clients[0].url}/api-docs/openapi.json",
            headers={"Authorization": f"Bearer {CLIENT_TOKEN}"},
            timeout=30,
        ).text,
    ]
    for document in documents:
        assert '"openapi"' in document
        assert USER_TOKEN not in document
        assert CLIENT_TOKEN not in document
