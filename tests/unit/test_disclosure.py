"""What a user who is not an admin learns of the clients: names, never URLs or payload ids
(issue 21, finding 14). The rewriting itself; tests/acceptance/test_disclosure.py drives it
through a real server."""

from __future__ import annotations

from urllib.parse import quote

from job_orchestrator.server.disclosure import ClientNames

NAMES = ClientNames(
    [
        ("http://10.0.0.5:9000/submit", "docking-1"),
        ("http://10.0.0.5:90/submit", "docking-2"),
        ("http://nmr-node:9000/upload", "nmr-1"),
    ]
)


def test_urls_become_names_whatever_path_follows() -> None:
    text = (
        b"retrieve 17 from http://10.0.0.5:9000/retrieve/17: timed out; "
        b"health check of http://10.0.0.5:90: answered 500; client http://nmr-node:9000"
    )
    assert NAMES.rewrite(text) == (
        b"retrieve from docking-1: timed out; health check of docking-2: answered 500; client nmr-1"
    )


def test_payload_ids_go() -> None:
    assert NAMES.rewrite(b"kill 4 at x; log of 12 from y; payload 9 lost") == (
        b"kill at x; log of from y; payload lost"
    )


def test_a_client_no_longer_configured_has_no_name_but_no_url_either() -> None:
    text = b"its client http://old-node:9000 is no longer configured"
    assert NAMES.rewrite(text) == b"its client former-client is no longer configured"


def test_a_json_document_stays_valid_and_other_urls_stay() -> None:
    body = b'{"client":"http://10.0.0.5:9000","callback_url":"https://portal.example/hook"}'
    assert NAMES.rewrite(body) == (
        b'{"client":"docking-1","callback_url":"https://portal.example/hook"}'
    )


def test_the_message_header_is_rewritten_as_text() -> None:
    header = quote("partial retrieve 3 from http://10.0.0.5:9000/partial/3", safe=" :/").encode()
    assert NAMES.rewrite_header(header) == b"partial retrieve from docking-1"


def test_connection_errors_name_the_client_too() -> None:
    text = (
        b"Cannot connect to host 10.0.0.5:9000 ssl:default "
        b"[Connect call failed ('10.0.0.5', 9000)]; not 110.0.0.5:90001"
    )
    assert NAMES.rewrite(text) == (
        b"Cannot connect to host docking-1 ssl:default [Connect call failed docking-1]; "
        b"not 110.0.0.5:90001"
    )
