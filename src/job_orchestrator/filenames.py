"""Turning client-supplied file names into names that are safe to create on disk.

Two entry points, for the two shapes of name the wire protocol carries:

* :func:`sanitize_filename` keeps only the last path component, exactly as upstream's
  ``Path::file_name`` did (UPSTREAM §8.1), so existing portals that send ``../x`` or
  ``dir/x`` keep getting the same stored name.
* :func:`safe_relative_path` accepts nested names such as ``sub/x.txt`` but refuses anything
  that could leave the job directory, instead of silently flattening it.

Both raise :class:`UnsafeFileNameError` (a ``ValueError``) whose message can be shown to the
user as-is.
"""

from __future__ import annotations

from pathlib import PurePosixPath

__all__ = [
    "MAX_NAME_BYTES",
    "MAX_PATH_DEPTH",
    "UnsafeFileNameError",
    "safe_relative_path",
    "sanitize_filename",
]

# NAME_MAX on Linux and most Unix file systems; longer names fail at open() with a less
# helpful error, so we refuse them up front.
MAX_NAME_BYTES = 255
# Generous for real inputs, but keeps a hostile request from making us build a path that
# exceeds PATH_MAX (4096) or creating thousands of directories.
MAX_PATH_DEPTH = 32

_FALLBACK_NAME = "file"


class UnsafeFileNameError(ValueError):
    """A file name that cannot be stored safely; the message is meant for the user."""


def _encoded_length(name: str) -> int:
    try:
        return len(name.encode("utf-8"))
    except UnicodeEncodeError:
        # Lone surrogates (e.g. from surrogateescape decoding) cannot become a file name
        # that other clients could ever ask for again.
        raise UnsafeFileNameError("file name is not valid UTF-8") from None


def _check_component(part: str) -> None:
    size = _encoded_length(part)
    if size > MAX_NAME_BYTES:
        raise UnsafeFileNameError(
            f"file name too long ({size} bytes, limit {MAX_NAME_BYTES})",
        )


def sanitize_filename(name: str) -> str:
    """Return the last normal component of ``name``, or ``"file"`` if there is none.

    Upstream Rust ``Path::file_name`` semantics on Unix: split on ``/``, ignore empty and
    ``.`` components and take the last one; if there is none or it is ``..`` the result is
    ``"file"``. A backslash is an ordinary character, not a separator.

    Raises:
        UnsafeFileNameError: ``name`` contains a NUL byte, is not valid UTF-8, or the result
            is longer than :data:`MAX_NAME_BYTES` bytes in UTF-8.
    """
    # Checked on the whole input, not just the kept part: a NUL anywhere means the client
    # is sending something other than a file name, and upstream failed on it too.
    if "\0" in name:
        raise UnsafeFileNameError("file name contains a NUL byte")
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if not parts or parts[-1] == "..":
        return _FALLBACK_NAME
    result = parts[-1]
    _check_component(result)
    return result


def safe_relative_path(name: str) -> PurePosixPath:
    """Validate a nested part name such as ``sub/x.txt`` and return it as a relative path.

    Every component must be a normal name: no empty components (so no leading, trailing or
    doubled ``/``), no ``.`` or ``..``, no NUL byte, each at most :data:`MAX_NAME_BYTES`
    bytes, and at most :data:`MAX_PATH_DEPTH` components. Nothing is rewritten: a name that
    is not already clean is refused, so the stored path is always the one the client sent.

    Raises:
        UnsafeFileNameError: the name breaks one of the rules above.
    """
    if not name:
        raise UnsafeFileNameError("file name is empty")
    if "\0" in name:
        raise UnsafeFileNameError("file name contains a NUL byte")
    if name.startswith("/"):
        raise UnsafeFileNameError("file name must be a relative path")
    parts = name.split("/")
    if len(parts) > MAX_PATH_DEPTH:
        raise UnsafeFileNameError(
            f"file path too deep ({len(parts)} levels, limit {MAX_PATH_DEPTH})",
        )
    for part in parts:
        if part == "":
            raise UnsafeFileNameError("file path contains an empty component")
        if part in (".", ".."):
            raise UnsafeFileNameError(f"file path contains a {part!r} component")
        _check_component(part)
    return PurePosixPath(*parts)
