"""The threaded writer and the read-ahead reader that big transfers use (_filestream.py)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import BinaryIO

import pytest

from job_orchestrator._filestream import CHUNK_BYTES, ThreadedWriter, read_ahead


@pytest.mark.parametrize("size", [0, 1, CHUNK_BYTES - 1, CHUNK_BYTES, 3 * CHUNK_BYTES + 5])
async def test_read_ahead_yields_the_file(tmp_path: Path, size: int) -> None:
    path = tmp_path / "f.bin"
    content = os.urandom(size)
    path.write_bytes(content)
    chunks = [chunk async for chunk in read_ahead(path)]
    assert b"".join(chunks) == content
    assert all(len(chunk) == CHUNK_BYTES for chunk in chunks[:-1])
    assert len(chunks[-1]) < CHUNK_BYTES


async def test_read_ahead_closed_early_waits_for_its_read(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(os.urandom(4 * CHUNK_BYTES))
    chunks = read_ahead(path)
    assert len(await anext(chunks)) == CHUNK_BYTES
    await chunks.aclose()  # a read of the second chunk was in flight


async def test_read_ahead_of_a_missing_file_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        await anext(read_ahead(tmp_path / "missing"))


@pytest.mark.parametrize("pieces", [[b"abc"], [b"x" * 1000] * 5000, [os.urandom(CHUNK_BYTES)] * 3])
async def test_writer_writes_everything_in_order(tmp_path: Path, pieces: list[bytes]) -> None:
    path = tmp_path / "out.bin"
    with path.open("wb") as sink:
        writer = ThreadedWriter(sink)
        for piece in pieces:
            await writer.write(piece)
        await writer.finish()
    assert path.read_bytes() == b"".join(pieces)


async def test_small_body_is_written_without_a_thread(tmp_path: Path) -> None:
    path = tmp_path / "out.bin"
    with path.open("wb") as sink:
        writer = ThreadedWriter(sink)
        await writer.write(b"small")
        await writer.finish()
        assert not writer._threaded
    assert path.read_bytes() == b"small"


async def test_finish_now_from_synchronous_code(tmp_path: Path) -> None:
    path = tmp_path / "out.bin"
    content = os.urandom(3 * CHUNK_BYTES + 7)
    with path.open("wb") as sink:
        writer = ThreadedWriter(sink)
        for start in range(0, len(content), 100_000):
            writer.queue(content[start : start + 100_000])
            if writer.batch_full:
                await writer.flush()
        writer.finish_now()
    assert path.read_bytes() == content


def _full_device() -> BinaryIO:
    """A file every write to which fails (ENOSPC)."""
    return Path("/dev/full").open("wb", buffering=0)


async def test_write_error_comes_out_of_a_later_call() -> None:
    with _full_device() as sink:
        writer = ThreadedWriter(sink, batch_bytes=10)
        await writer.write(b"0123456789")  # handed to a thread: no error yet
        with pytest.raises(OSError, match="No space left"):
            await writer.finish()
        await writer.abandon()


async def test_abandon_waits_for_a_cancelled_write(tmp_path: Path) -> None:
    path = tmp_path / "out.bin"
    with path.open("wb") as sink:
        writer = ThreadedWriter(sink)

        async def write_a_lot() -> None:
            while True:
                await writer.write(os.urandom(CHUNK_BYTES))

        task = asyncio.create_task(write_a_lot())
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await writer.abandon()
        size = os.fstat(sink.fileno()).st_size
    assert path.stat().st_size == size  # nothing was written after abandon returned
