from __future__ import annotations

import ctypes
import logging
import os
import socket
import stat
import tempfile
import threading
import time
import tracemalloc
import zipfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from job_orchestrator.archive import (
    MANIFEST_NAME,
    MAX_DEPTH,
    ArchiveCancelledError,
    ArchiveError,
    ArchiveSummary,
    ResultTooLargeError,
    write_directory_zip,
)

MIB = 1024 * 1024


@pytest.fixture
def src(tmp_path: Path) -> Path:
    directory = tmp_path / "job"
    directory.mkdir()
    return directory


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    return tmp_path / "out" / "result.zip"


@pytest.fixture(autouse=True)
def _out_dir(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()


def contents(archive: Path) -> dict[str, bytes]:
    """Every entry of the archive; directories map to b""."""
    with zipfile.ZipFile(archive) as zf:
        assert zf.testzip() is None
        return {info.filename: zf.read(info) for info in zf.infolist()}


def write(path: Path, data: bytes | str = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def test_single_file(src: Path, dest: Path) -> None:
    write(src / "a.txt", b"hello")
    assert write_directory_zip(src, dest).files == 1
    assert contents(dest) == {"a.txt": b"hello"}


def test_multiple_and_nested_files(src: Path, dest: Path) -> None:
    write(src / "a.txt", b"A")
    write(src / "b.bin", bytes(range(256)))
    write(src / "sub" / "c.txt", b"C")
    write(src / "sub" / "deeper" / "d.txt", b"D")
    assert write_directory_zip(src, dest).files == 4
    assert contents(dest) == {
        "a.txt": b"A",
        "b.bin": bytes(range(256)),
        "sub/": b"",
        "sub/c.txt": b"C",
        "sub/deeper/": b"",
        "sub/deeper/d.txt": b"D",
    }


def test_empty_directory_gives_valid_empty_zip(src: Path, dest: Path) -> None:
    assert write_directory_zip(src, dest).files == 0
    assert contents(dest) == {}


def test_empty_subdirectory_is_kept(src: Path, dest: Path) -> None:
    (src / "empty").mkdir()
    write_directory_zip(src, dest)
    with zipfile.ZipFile(dest) as zf:
        assert zf.getinfo("empty/").is_dir()


@pytest.mark.parametrize("name", ["data..csv", "a..b", "...", "..hidden", "x.."])
def test_double_dots_inside_names_are_fine(src: Path, dest: Path, name: str) -> None:
    write(src / name, b"ok")
    write(src / "sub" / name, b"ok too")
    write_directory_zip(src, dest)
    assert contents(dest) == {name: b"ok", "sub/": b"", f"sub/{name}": b"ok too"}


def test_hidden_files_are_included(src: Path, dest: Path) -> None:
    write(src / ".orchestrator.exit", b"0")
    write(src / ".dir" / ".x", b"x")
    write_directory_zip(src, dest)
    assert set(contents(dest)) == {".orchestrator.exit", ".dir/", ".dir/.x"}


def test_exclude_names_only_applies_at_top_level(src: Path, dest: Path) -> None:
    write(src / ".orchestrator-state", b"secret")
    write(src / "sub" / ".orchestrator-state", b"user file")
    write(src / "keep.txt")
    write_directory_zip(src, dest, exclude_names={".orchestrator-state"})
    assert set(contents(dest)) == {"keep.txt", "sub/", "sub/.orchestrator-state"}


def test_symlink_into_excluded_entry_is_skipped(src: Path, dest: Path) -> None:
    write(src / ".orchestrator-state", b"secret")
    (src / "leak").symlink_to(".orchestrator-state")
    write_directory_zip(src, dest, exclude_names=[".orchestrator-state"])
    assert contents(dest) == {}


def test_destination_inside_source_is_not_included(src: Path) -> None:
    write(src / "a.txt", b"A")
    destination = src / "result.zip"
    assert write_directory_zip(src, destination).files == 1
    assert contents(destination) == {"a.txt": b"A"}
    assert sorted(p.name for p in src.iterdir()) == ["a.txt", "result.zip"]


def test_user_output_zip_is_just_a_file(src: Path, dest: Path) -> None:
    write(src / "output.zip", b"not really a zip")
    write(src / "a.txt", b"A")
    assert write_directory_zip(src, dest).files == 2
    assert contents(dest) == {"output.zip": b"not really a zip", "a.txt": b"A"}


def test_destination_over_user_output_zip_replaces_it(src: Path) -> None:
    write(src / "output.zip", b"user data")
    write(src / "a.txt", b"A")
    (src / "alias.zip").symlink_to("output.zip")
    destination = src / "output.zip"
    write_directory_zip(src, destination)
    # The file being replaced is never archived, not even through a symlink to it.
    assert contents(destination) == {"a.txt": b"A"}
    assert sorted(p.name for p in src.iterdir()) == ["a.txt", "alias.zip", "output.zip"]


def test_symlink_outside_is_skipped_and_rest_archived(
    tmp_path: Path, src: Path, dest: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write(tmp_path / "secret.txt", b"secret")
    (src / "escape").symlink_to(tmp_path / "secret.txt")
    (src / "escape_rel").symlink_to("../secret.txt")
    (src / "escape_dir").symlink_to(tmp_path)
    write(src / "a.txt", b"A")
    with caplog.at_level(logging.WARNING, logger="job_orchestrator.archive"):
        assert write_directory_zip(src, dest).files == 1
    assert contents(dest) == {"a.txt": b"A"}
    assert "escape" in caplog.text
    assert "outside" in caplog.text


def test_symlink_inside_to_file_is_archived_by_content(src: Path, dest: Path) -> None:
    write(src / "data" / "real.txt", b"content")
    (src / "link.txt").symlink_to("data/real.txt")
    (src / "data" / "abs_link.txt").symlink_to(src / "data" / "real.txt")
    assert write_directory_zip(src, dest).files == 3
    assert contents(dest) == {
        "data/": b"",
        "data/abs_link.txt": b"content",
        "data/real.txt": b"content",
        "link.txt": b"content",
    }
    with zipfile.ZipFile(dest) as zf:
        # Stored as a regular file, not as a symlink an extractor might recreate.
        assert stat.S_ISREG(zf.getinfo("link.txt").external_attr >> 16)


@pytest.mark.timeout(10)
def test_symlink_loops_do_not_hang(src: Path, dest: Path) -> None:
    write(src / "sub" / "a.txt", b"A")
    (src / "sub" / "up").symlink_to("..")
    (src / "self").symlink_to("self")
    (src / "ping").symlink_to("pong")
    (src / "pong").symlink_to("ping")
    write_directory_zip(src, dest)
    assert contents(dest) == {"sub/": b"", "sub/a.txt": b"A"}


def test_symlink_to_directory_inside_is_not_recursed(src: Path, dest: Path) -> None:
    write(src / "real" / "a.txt", b"A")
    (src / "alias").symlink_to("real")
    write_directory_zip(src, dest)
    assert set(contents(dest)) == {"real/", "real/a.txt"}


def test_dangling_symlink_is_skipped(
    src: Path, dest: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (src / "dangling").symlink_to("does-not-exist")
    write(src / "a.txt")
    with caplog.at_level(logging.WARNING, logger="job_orchestrator.archive"):
        assert write_directory_zip(src, dest).files == 1
    assert set(contents(dest)) == {"a.txt"}
    assert "dangling" in caplog.text


def test_fifo_and_socket_are_skipped(
    src: Path, dest: Path, caplog: pytest.LogCaptureFixture
) -> None:
    os.mkfifo(src / "pipe")
    (src / "pipe_link").symlink_to("pipe")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(src / "sock"))
        write(src / "a.txt")
        with caplog.at_level(logging.WARNING, logger="job_orchestrator.archive"):
            assert write_directory_zip(src, dest).files == 1
    assert set(contents(dest)) == {"a.txt"}
    for name in ("'pipe'", "'pipe_link'", "'sock'"):
        assert name in caplog.text


def test_non_utf8_name_is_skipped(src: Path, dest: Path) -> None:
    bad = os.fsencode(src) + b"/bad\xff.txt"
    with open(bad, "wb") as fh:
        fh.write(b"x")
    write(src / "good.txt")
    assert write_directory_zip(src, dest).files == 1
    assert set(contents(dest)) == {"good.txt"}


def test_size_cap_raises_and_leaves_nothing_behind(src: Path, dest: Path) -> None:
    write(src / "a.bin", b"a" * 600)
    write(src / "b.bin", b"b" * 600)
    write(dest, b"previous result")
    with pytest.raises(ResultTooLargeError, match="limit of 1000 bytes"):
        write_directory_zip(src, dest, max_total_bytes=1000)
    assert list(dest.parent.iterdir()) == [dest]
    assert dest.read_bytes() == b"previous result"


def test_size_cap_inside_source_leaves_no_temp_file(src: Path) -> None:
    write(src / "big.bin", b"x" * 2048)
    with pytest.raises(ResultTooLargeError):
        write_directory_zip(src, src / "output.zip", max_total_bytes=1024)
    assert [p.name for p in src.iterdir()] == ["big.bin"]


def test_size_cap_is_inclusive_and_counts_uncompressed_bytes(src: Path, dest: Path) -> None:
    write(src / "a.txt", b"\0" * 1000)
    write(src / "b.txt", b"\0" * 1000)
    assert write_directory_zip(src, dest, max_total_bytes=2000).files == 2
    assert dest.stat().st_size < 2000


def test_size_cap_message_in_megabytes() -> None:
    error = ResultTooLargeError(100 * MIB)
    assert str(error) == "result exceeds RESULT_MAX_MB limit of 100 MB"
    assert error.limit_bytes == 100 * MIB
    assert isinstance(error, ArchiveError)


def test_missing_source_raises(tmp_path: Path, dest: Path) -> None:
    with pytest.raises(ArchiveError):
        write_directory_zip(tmp_path / "nope", dest)
    assert list(dest.parent.iterdir()) == []


def test_source_that_is_a_file_raises(tmp_path: Path, dest: Path) -> None:
    with pytest.raises(ArchiveError, match=r"(?i)not a directory"):
        write_directory_zip(write(tmp_path / "file.txt"), dest)
    assert list(dest.parent.iterdir()) == []


def test_missing_destination_directory_raises(src: Path, tmp_path: Path) -> None:
    with pytest.raises(ArchiveError):
        write_directory_zip(src, tmp_path / "no-such-dir" / "out.zip")


def test_names_are_deterministic_and_sorted(src: Path, tmp_path: Path) -> None:
    for name in ["b", "a", "c/z", "c/y", "B", "é"]:
        write(src / name)
    first, second = tmp_path / "out" / "1.zip", tmp_path / "out" / "2.zip"
    write_directory_zip(src, first)
    write_directory_zip(src, second)
    with zipfile.ZipFile(first) as one, zipfile.ZipFile(second) as two:
        assert one.namelist() == two.namelist()
        assert one.namelist() == ["B", "a", "b", "c/", "c/y", "c/z", "é"]


def test_summary_counts_files_and_names_what_was_left_out(src: Path, dest: Path) -> None:
    write(src / "d" / "f.txt")
    (src / "link").symlink_to("d/f.txt")
    (src / "out").symlink_to("/etc/passwd")
    os.mkfifo(src / "pipe")
    summary = write_directory_zip(src, dest)
    assert summary == ArchiveSummary(
        files=2,
        skipped=2,
        skipped_named=(
            ("out", "symlink points outside the archived directory"),
            ("pipe", "not a regular file or directory"),
        ),
    )
    assert summary.describe().startswith("result incomplete: 2 entries left out")
    assert "out (symlink points outside" in summary.describe()
    assert ArchiveSummary(files=3).describe() == ""
    long = ArchiveSummary(files=0, skipped=1, skipped_named=(("x" * 70_000, "too long"),))
    assert len(long.describe()) < 300
    # Without manifest=True nothing is added to the archive.
    assert set(contents(dest)) == {"d/", "d/f.txt", "link"}


def test_manifest_lists_what_was_left_out(src: Path, dest: Path) -> None:
    write(src / "a.txt", b"A")
    os.mkfifo(src / "pipe")
    write_directory_zip(src, dest, manifest=True)
    files = contents(dest)
    assert set(files) == {"a.txt", MANIFEST_NAME}
    text = files[MANIFEST_NAME].decode()
    assert text.startswith("1 entry of the job's directory not in this archive:")
    assert "pipe\tnot a regular file or directory" in text


def test_manifest_is_only_written_when_something_was_left_out(src: Path, dest: Path) -> None:
    write(src / "a.txt", b"A")
    assert write_directory_zip(src, dest, manifest=True).skipped == 0
    assert set(contents(dest)) == {"a.txt"}


def test_manifest_name_is_reserved_at_the_top(src: Path, dest: Path) -> None:
    write(src / MANIFEST_NAME, b"forged: nothing was left out")
    write(src / "sub" / MANIFEST_NAME, b"just a file")
    write_directory_zip(src, dest, manifest=True)
    files = contents(dest)
    assert files["sub/" + MANIFEST_NAME] == b"just a file"
    assert b"forged" not in files[MANIFEST_NAME]
    assert f"{MANIFEST_NAME}\tname reserved" in files[MANIFEST_NAME].decode()


def test_tree_deeper_than_the_limit_is_cut_and_reported(src: Path, dest: Path) -> None:
    deep = src
    for _ in range(MAX_DEPTH + 3):
        deep = deep / "d"
    write(deep / "bottom.txt")
    write(src / "top.txt")
    summary = write_directory_zip(src, dest, manifest=True)
    cut = "d/" * (MAX_DEPTH + 1)
    assert summary.skipped_named == ((cut, f"deeper than {MAX_DEPTH} levels"),)
    names = set(contents(dest))
    assert "d/" * MAX_DEPTH in names
    assert cut not in names
    assert "top.txt" in names


def test_size_cap_counts_apparent_size_of_sparse_files_before_compressing(
    src: Path, dest: Path
) -> None:
    # Compressible data first: the cap must trip on the sizes, before any of it is deflated.
    write(src / "a-first.txt", b"abc" * MIB)
    with (src / "z-sparse").open("wb") as sparse:
        sparse.truncate(1 << 40)
    with pytest.raises(ResultTooLargeError, match="10 MB"):
        write_directory_zip(src, dest, max_total_bytes=10 * MIB)
    assert list(dest.parent.iterdir()) == []


def test_cancel_stops_the_build_and_leaves_nothing(src: Path, dest: Path) -> None:
    write(src / "a.txt", b"A")
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(ArchiveCancelledError):
        write_directory_zip(src, dest, cancel=cancel)
    assert list(dest.parent.iterdir()) == []


def test_root_that_is_a_symlink_is_refused(tmp_path: Path, src: Path, dest: Path) -> None:
    write(src / "a.txt")
    (tmp_path / "alias").symlink_to(src)
    with pytest.raises(ArchiveError):
        write_directory_zip(tmp_path / "alias", dest)


_RENAME_EXCHANGE = 2


def _exchange(libc: ctypes.CDLL, first: Path, second: Path) -> None:
    at_fdcwd = -100
    if libc.renameat2(at_fdcwd, bytes(first), at_fdcwd, bytes(second), _RENAME_EXCHANGE) != 0:
        raise OSError(ctypes.get_errno(), "renameat2")


@pytest.mark.timeout(120)
def test_directory_swapped_for_a_symlink_mid_walk_never_leaks(tmp_path: Path, src: Path) -> None:
    """The /download_partial race: a directory and a symlink to someone else's files trade
    places again and again while the archive is built; nothing of theirs may get in."""
    other = tmp_path / "other-job"
    write(other / "secret.txt", b"SECRET of the other user")
    write(other / "a", b"x")
    write(src / "d" / "a", os.urandom(64 * 1024) * 8)
    write(src / "d" / "secret.txt", b"mine")
    (src / "x").symlink_to(other)
    libc = ctypes.CDLL(None, use_errno=True)
    stop = threading.Event()

    def swap() -> None:
        while not stop.is_set():
            _exchange(libc, src / "d", src / "x")

    swapper = threading.Thread(target=swap, daemon=True)
    swapper.start()
    try:
        for round_ in range(200):
            destination = tmp_path / "out" / f"partial-{round_}.zip"
            write_directory_zip(src, destination)
            for data in contents(destination).values():
                assert b"SECRET" not in data
            destination.unlink()
    finally:
        stop.set()
        swapper.join()


def test_permissions_and_timestamps_are_preserved(src: Path, dest: Path) -> None:
    script = write(src / "run.sh", b"#!/bin/sh\n")
    script.chmod(0o750)
    data = write(src / "data.txt")
    data.chmod(0o640)
    mtime = time.mktime((2021, 6, 15, 12, 30, 44, 0, 0, -1))
    os.utime(data, (mtime, mtime))
    old = write(src / "old.txt")
    os.utime(old, (0, 0))
    write_directory_zip(src, dest)
    with zipfile.ZipFile(dest) as zf:
        assert stat.S_IMODE(zf.getinfo("run.sh").external_attr >> 16) == 0o750
        assert stat.S_IMODE(zf.getinfo("data.txt").external_attr >> 16) == 0o640
        assert zf.getinfo("data.txt").date_time == (2021, 6, 15, 12, 30, 44)
        assert zf.getinfo("old.txt").date_time == (1980, 1, 1, 0, 0, 0)


def test_already_compressed_files_are_stored(src: Path, dest: Path) -> None:
    write(src / "picture.PNG", b"\0" * 4096)
    write(src / "table.csv.gz", b"\0" * 4096)
    write(src / "table.csv", b"\0" * 4096)
    write_directory_zip(src, dest)
    with zipfile.ZipFile(dest) as zf:
        assert zf.getinfo("picture.PNG").compress_type == zipfile.ZIP_STORED
        assert zf.getinfo("table.csv.gz").compress_type == zipfile.ZIP_STORED
        assert zf.getinfo("table.csv").compress_type == zipfile.ZIP_DEFLATED
        assert zf.getinfo("table.csv").compress_size < 100


def test_large_file_is_streamed_with_bounded_memory(src: Path, dest: Path) -> None:
    with open(src / "big.dat", "wb") as fh:
        fh.truncate(50 * MIB)  # sparse: no disk or memory cost to create
    tracemalloc.start()
    try:
        assert write_directory_zip(src, dest).files == 1
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 * MIB
    with zipfile.ZipFile(dest) as zf:
        assert zf.getinfo("big.dat").file_size == 50 * MIB


_SAFE_CHARS = st.characters(codec="utf-8", exclude_characters="/\0")
_names = st.one_of(
    st.sampled_from(["data..csv", "...", ".hidden", "a b", "文件.txt", "Ñoño.pdf", "x.zip"]),
    st.text(_SAFE_CHARS, min_size=1, max_size=16),
).filter(lambda name: name not in (".", ".."))


def _no_prefix_clash(tree: dict[tuple[str, ...], bytes]) -> bool:
    dirs = {parts[:i] for parts in tree for i in range(1, len(parts))}
    return not dirs & tree.keys()


_trees = st.dictionaries(
    st.lists(_names, min_size=1, max_size=3).map(tuple),
    st.binary(max_size=256),
    max_size=8,
).filter(_no_prefix_clash)


@settings(max_examples=60, deadline=None)
@given(_trees)
def test_round_trip_preserves_paths_and_bytes(tree: dict[tuple[str, ...], bytes]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "src"
        source.mkdir()
        for parts, data in tree.items():
            write(source.joinpath(*parts), data)
        destination = Path(tmp) / "result.zip"
        assert write_directory_zip(source, destination).files == len(tree)
        expected = {"/".join(parts): data for parts, data in tree.items()}
        expected |= {"/".join(parts[:i]) + "/": b"" for parts in tree for i in range(1, len(parts))}
        assert contents(destination) == expected
