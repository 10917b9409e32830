"""The last line of a failed run.sh's output, and the query parameters of the log routes."""

from __future__ import annotations

from pathlib import Path

import pytest

from job_orchestrator.client.log_tail import TAIL_BYTES, last_output_line, with_last_line
from job_orchestrator.client.logs import parse_log_wait
from job_orchestrator.server.logs import parse_follow
from job_orchestrator.wire import LogQueryError, parse_offset


def tail_of(tmp_path: Path, content: bytes) -> str:
    log = tmp_path / "output.log"
    log.write_bytes(content)
    return last_output_line(log)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", ""),
        (b"\n\n  \n", ""),
        (b"one\ntwo\n", "two"),
        (b"one\ntwo", "two"),
        (b"error here\n\n\n", "error here"),
        # A progress bar rewritten with CR: the last state counts.
        (b"10%\r50%\r90%\n", "90%"),
        (b"\tbad\x1b[31m red\x00\n", "bad [31m red"),
        (b"caf\xc3\xa9 \xff\n", "caf\u00e9 \ufffd"),
        # The wrapper's own report of a signal repeats the status: skipped.
        (
            b"working\njob-orchestrator-wrapper: line 1:   42 Killed   bash run.sh\n",
            "working",
        ),
    ],
)
def test_last_output_line(tmp_path: Path, content: bytes, expected: str) -> None:
    assert tail_of(tmp_path, content) == expected


def test_only_the_end_of_the_log_is_read(tmp_path: Path) -> None:
    assert tail_of(tmp_path, b"x" * 10_000) == "x" * TAIL_BYTES
    assert tail_of(tmp_path, b"first\n" + b"y" * (TAIL_BYTES - 1) + b"\n") == "y" * (TAIL_BYTES - 1)


def test_a_missing_log_leaves_the_message_alone(tmp_path: Path) -> None:
    missing = tmp_path / "absent.log"
    assert with_last_line("run.sh exited with status 3", missing) == "run.sh exited with status 3"
    (tmp_path / "present.log").write_bytes(b"grep: input.pdb: No such file or directory\n")
    assert (
        with_last_line("run.sh exited with status 2", tmp_path / "present.log")
        == "run.sh exited with status 2: grep: input.pdb: No such file or directory"
    )


@pytest.mark.parametrize("raw", ["-1", "1.5", "", " 1", "1e3", "x", str(2**63)])
def test_bad_offsets(raw: str) -> None:
    with pytest.raises(LogQueryError):
        parse_offset(raw)


def test_offsets_and_flags() -> None:
    assert parse_offset(None) == 0
    assert parse_offset("+12") == 12
    assert parse_follow(None) is False
    assert parse_follow("1") is True
    assert parse_follow("TRUE") is True
    assert parse_follow("0") is False
    with pytest.raises(LogQueryError):
        parse_follow("yes")


@pytest.mark.parametrize("raw", ["-1", "61", "nan", "inf", "1e1", ""])
def test_bad_client_waits(raw: str) -> None:
    with pytest.raises(LogQueryError):
        parse_log_wait(raw)


def test_client_waits() -> None:
    assert parse_log_wait(None) == 0.0
    assert parse_log_wait("2.5") == 2.5
    assert parse_log_wait("60") == 60.0
