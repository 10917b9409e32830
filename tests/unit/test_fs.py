"""remove_tree: trees deeper than Python's recursion limit, and symlinks left alone."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

from job_orchestrator._fs import remove_tree


def _deep_tree(root: Path, depth: int) -> None:
    # Built from directory descriptors: the path soon gets too long for one mkdir.
    root.mkdir()
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(depth):
            os.mkdir("d", dir_fd=fd)
            child = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = child
        os.close(os.open("f", os.O_WRONLY | os.O_CREAT, dir_fd=fd))
    finally:
        os.close(fd)


def test_removes_a_tree_deeper_than_the_recursion_limit(tmp_path: Path) -> None:
    depth = sys.getrecursionlimit() + 500
    sample = tmp_path / "sample"
    _deep_tree(sample, depth)
    with pytest.raises(RecursionError):  # why remove_tree exists
        shutil.rmtree(sample, ignore_errors=True)

    tree = tmp_path / "tree"
    _deep_tree(tree, depth)
    remove_tree(tree)
    assert not tree.exists()
    remove_tree(sample)
    assert not sample.exists()


def test_never_follows_a_symlink_out(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("keep")
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "link").symlink_to(outside)
    remove_tree(tree)
    assert not tree.exists()
    assert (outside / "keep.txt").read_text() == "keep"


def test_missing_path_is_fine(tmp_path: Path) -> None:
    remove_tree(tmp_path / "absent")
