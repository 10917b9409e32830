"""The one reader of a job's exit file: no links, regular files only, a few bytes, 0-255."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from job_orchestrator.client.sandbox import read_exit_file, recorded_exit_code


@pytest.fixture
def exit_file(tmp_path: Path) -> Path:
    (tmp_path / "exit").mkdir()
    return tmp_path / "exit" / "code"


@pytest.mark.parametrize(("content", "expected"), [("0\n", 0), ("3\n", 3), ("255\n", 255)])
def test_the_wrappers_status_is_read(exit_file: Path, content: str, expected: int) -> None:
    exit_file.write_text(content)
    assert read_exit_file(exit_file) == expected
    assert asyncio.run(recorded_exit_code(exit_file)) == expected


@pytest.mark.parametrize("content", ["", "4242\n", "-1\n", "1e3\n", "0x10\n", " 7 7\n", "9" * 64])
def test_anything_but_a_plain_status_is_unknown(exit_file: Path, content: str) -> None:
    exit_file.write_text(content)
    assert read_exit_file(exit_file) is None


def test_a_missing_file_is_unknown(exit_file: Path) -> None:
    assert read_exit_file(exit_file) is None


def test_a_symlink_is_never_followed(exit_file: Path, tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("0\n")
    exit_file.symlink_to(target)
    assert read_exit_file(exit_file) is None


def test_a_symlink_to_dev_zero_is_refused(exit_file: Path) -> None:
    exit_file.symlink_to("/dev/zero")
    assert read_exit_file(exit_file) is None


def test_a_fifo_is_refused_without_blocking(exit_file: Path) -> None:
    os.mkfifo(exit_file)  # no writer: a blocking open or read would hang this test
    assert read_exit_file(exit_file) is None


def test_a_directory_is_refused(exit_file: Path) -> None:
    exit_file.mkdir()
    assert read_exit_file(exit_file) is None


def test_a_linked_exit_directory_is_not_followed(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "code").write_text("0\n")
    (tmp_path / "exit").symlink_to(elsewhere)
    assert read_exit_file(tmp_path / "exit" / "code") is None
