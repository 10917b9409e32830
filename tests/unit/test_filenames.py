from __future__ import annotations

from pathlib import PurePosixPath

import pytest
from hypothesis import given
from hypothesis import strategies as st

from job_orchestrator.filenames import (
    MAX_NAME_BYTES,
    MAX_PATH_DEPTH,
    UnsafeFileNameError,
    safe_relative_path,
    sanitize_filename,
)

# Every vector listed in UPSTREAM §8.1.
UPSTREAM_VECTORS = [
    ("../../../etc/passwd", "passwd"),
    ("dir/../file.txt", "file.txt"),
    ("/etc/passwd", "passwd"),
    ("C:\\Windows\\file.txt", "C:\\Windows\\file.txt"),
    ("a/b/c/d/e/f.dat", "f.dat"),
    ("", "file"),
    ("../../../", "file"),
    ("/", "file"),
    (".", "file"),
    ("..", "file"),
    ("./", "file"),
    ("foo.txt/.", "foo.txt"),
    ("a/b/", "b"),
    ("文件.txt", "文件.txt"),
    ("Ñoño.pdf", "Ñoño.pdf"),
    ("...", "..."),
    (".hidden", ".hidden"),
]


@pytest.mark.parametrize(("name", "expected"), UPSTREAM_VECTORS)
def test_sanitize_filename_matches_upstream(name: str, expected: str) -> None:
    assert sanitize_filename(name) == expected


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("./foo", "foo"),
        ("a/./b/./", "b"),
        ("dir/..", "file"),
        ("a//b", "b"),
        ("data..csv", "data..csv"),
        ("back\\slash/..\\x", "..\\x"),
        ("with space.txt", "with space.txt"),
    ],
)
def test_sanitize_filename_other_cases(name: str, expected: str) -> None:
    assert sanitize_filename(name) == expected


@pytest.mark.parametrize("name", ["a\0b", "\0", "dir\0/x.txt"])
def test_sanitize_filename_rejects_nul(name: str) -> None:
    with pytest.raises(UnsafeFileNameError, match="NUL byte"):
        sanitize_filename(name)


def test_sanitize_filename_length_limit_is_in_utf8_bytes() -> None:
    assert sanitize_filename("a" * MAX_NAME_BYTES) == "a" * MAX_NAME_BYTES
    # 128 two-byte characters: 128 code points but 256 bytes.
    with pytest.raises(UnsafeFileNameError, match=r"too long \(256 bytes, limit 255\)"):
        sanitize_filename("ñ" * 128)
    with pytest.raises(UnsafeFileNameError, match=r"too long \(300 bytes, limit 255\)"):
        sanitize_filename("x" * 300)


def test_sanitize_filename_only_checks_length_of_the_kept_component() -> None:
    assert sanitize_filename("d" * 300 + "/ok.txt") == "ok.txt"


def test_sanitize_filename_rejects_lone_surrogate() -> None:
    with pytest.raises(UnsafeFileNameError, match="UTF-8"):
        sanitize_filename("bad\udcff.txt")


def test_unsafe_file_name_error_is_a_value_error() -> None:
    assert issubclass(UnsafeFileNameError, ValueError)


_name_alphabet = st.characters(codec="utf-8")
_path_like = st.lists(
    st.one_of(
        st.sampled_from(["", ".", "..", "...", "/", "\\", "\0", "a", "文件"]),
        st.text(_name_alphabet, max_size=20),
    ),
    max_size=8,
).map("/".join)


@given(st.one_of(st.text(_name_alphabet, max_size=400), _path_like))
def test_sanitize_filename_result_is_always_a_single_safe_component(name: str) -> None:
    try:
        result = sanitize_filename(name)
    except UnsafeFileNameError:
        return
    assert "/" not in result
    assert result not in ("", ".", "..")
    assert "\0" not in result
    assert len(result.encode("utf-8")) <= MAX_NAME_BYTES


@given(_path_like)
def test_sanitize_filename_is_idempotent(name: str) -> None:
    try:
        once = sanitize_filename(name)
    except UnsafeFileNameError:
        return
    assert sanitize_filename(once) == once


@pytest.mark.parametrize(
    ("name", "parts"),
    [
        ("x.txt", ("x.txt",)),
        ("sub/x.txt", ("sub", "x.txt")),
        ("a/b/c/data..csv", ("a", "b", "c", "data..csv")),
        ("...", ("...",)),
        (".hidden/.x", (".hidden", ".x")),
        ("C:\\Windows\\file.txt", ("C:\\Windows\\file.txt",)),
        ("文件/Ñoño.pdf", ("文件", "Ñoño.pdf")),
    ],
)
def test_safe_relative_path_accepts_normal_paths(name: str, parts: tuple[str, ...]) -> None:
    result = safe_relative_path(name)
    assert isinstance(result, PurePosixPath)
    assert result.parts == parts


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("", "empty"),
        ("/etc/passwd", "relative"),
        ("../x", "'..'"),
        ("a/../../x", "'..'"),
        ("a/..", "'..'"),
        ("./x", "'.'"),
        ("a/./x", "'.'"),
        ("a//x", "empty component"),
        ("a/", "empty component"),
        ("a\0/x", "NUL byte"),
        ("a/" + "x" * 256, r"too long \(256 bytes, limit 255\)"),
        ("/".join(["d"] * (MAX_PATH_DEPTH + 1)), "too deep"),
        ("a/\udcff", "UTF-8"),
    ],
)
def test_safe_relative_path_rejects_unsafe_paths(name: str, message: str) -> None:
    with pytest.raises(UnsafeFileNameError, match=message):
        safe_relative_path(name)


def test_safe_relative_path_depth_limit_is_inclusive() -> None:
    name = "/".join(["d"] * MAX_PATH_DEPTH)
    assert len(safe_relative_path(name).parts) == MAX_PATH_DEPTH


@given(_path_like)
def test_safe_relative_path_never_escapes(name: str) -> None:
    try:
        result = safe_relative_path(name)
    except UnsafeFileNameError:
        return
    assert not result.is_absolute()
    assert str(result) == name
    for part in result.parts:
        assert part not in ("", ".", "..")
        assert "\0" not in part
        assert len(part.encode("utf-8")) <= MAX_NAME_BYTES
