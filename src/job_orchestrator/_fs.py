"""Removing directory trees that a job built, however deep."""

from __future__ import annotations

import os
import shutil
import subprocess

__all__ = ["remove_tree"]


def remove_tree(path: str | os.PathLike[str]) -> None:
    """Remove `path` and everything below it, ignoring errors, never following symlinks.

    `shutil.rmtree` recurses once per directory level, so a job that leaves a tree 10,000
    levels deep makes it raise `RecursionError` (not an `OSError`, so `ignore_errors` does not
    cover it) and would kill the cleaner loop that called it. GNU `rm` walks iteratively
    (fts), so it takes over for such trees.
    """
    try:
        shutil.rmtree(path, ignore_errors=True)
    except RecursionError:
        subprocess.run(
            ["rm", "-rf", "--one-file-system", "--", os.fspath(path)],
            check=False,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
