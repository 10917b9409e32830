"""Which jobs the disk watcher stops (client/disk.py `to_stop`), and the streamed ZIP it relies
on to hand a full disk's files to the server."""

from __future__ import annotations

import io
import os
import threading
import zipfile
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from job_orchestrator.archive import stream_directory_zip
from job_orchestrator.client.disk import DiskCheck, Episode, to_stop

MB = 1024 * 1024
FINE = DiskCheck(free_bytes=500 * MB, reserve_bytes=100 * MB)
LOW = DiskCheck(free_bytes=10 * MB, reserve_bytes=100 * MB)
FULL = DiskCheck(free_bytes=0, reserve_bytes=100 * MB)


def test_above_the_reserve_nothing_is_stopped_and_sizes_are_the_baseline() -> None:
    episode = Episode()
    assert to_stop(FINE, episode, {1: 10 * MB, 2: 20 * MB}, None) == {}
    assert episode.before == {1: 10 * MB, 2: 20 * MB}


def test_the_biggest_writer_since_the_crossing_is_stopped_even_when_it_can_write_no_more() -> None:
    episode = Episode()
    to_stop(FINE, episode, {1: 10 * MB, 2: 20 * MB, 3: 5 * MB}, None)
    # Job 2 filled the disk within one interval; it cannot grow any more.
    stops = to_stop(FULL, episode, {1: 11 * MB, 2: 400 * MB, 3: 5 * MB}, None)
    assert list(stops) == [2]
    assert stops[2].startswith("disk full:")
    # Next check, nothing grew: nobody else is stopped (job 1 wrote before, not now).
    assert to_stop(FULL, episode, {1: 11 * MB, 3: 5 * MB}, None) == {}


def test_after_the_first_stop_any_job_still_writing_is_stopped() -> None:
    episode = Episode()
    to_stop(FINE, episode, {1: 10 * MB, 2: 20 * MB, 3: 5 * MB}, None)
    assert list(to_stop(LOW, episode, {1: 10 * MB, 2: 90 * MB, 3: 5 * MB}, None)) == [2]
    assert list(to_stop(LOW, episode, {1: 10 * MB, 3: 6 * MB}, None)) == [3]


def test_free_space_taken_by_no_job_stops_no_job() -> None:
    episode = Episode()
    to_stop(FINE, episode, {1: 10 * MB}, None)
    assert to_stop(LOW, episode, {1: 10 * MB}, None) == {}
    assert to_stop(LOW, episode, {1: 10 * MB}, None) == {}


def test_a_jump_to_a_full_disk_stops_the_largest_job_at_once() -> None:
    # No measurement above the reserve (the disk was far from full one check earlier), and
    # the writer filled it to the last byte: it will never grow again, so growth cannot
    # name it; its size does.
    episode = Episode()
    assert list(to_stop(FULL, episode, {1: 10 * MB, 2: 400 * MB}, None)) == [2]
    assert to_stop(FULL, episode, {1: 10 * MB}, None) == {}


def test_a_job_started_after_the_last_measurement_wrote_all_it_holds() -> None:
    episode = Episode()
    to_stop(FINE, episode, {1: 10 * MB}, None)
    assert list(to_stop(LOW, episode, {1: 12 * MB, 2: 30 * MB}, None)) == [2]


def test_back_above_the_reserve_a_new_episode_starts() -> None:
    episode = Episode()
    to_stop(FINE, episode, {1: 1 * MB, 2: 1 * MB}, None)
    assert list(to_stop(LOW, episode, {1: 50 * MB, 2: 1 * MB}, None)) == [1]
    to_stop(FINE, episode, {2: 1 * MB}, None)
    assert not episode.stopped
    assert list(to_stop(LOW, episode, {2: 3 * MB}, None)) == [2]


def test_the_per_job_limit_holds_whatever_the_free_space() -> None:
    stops = to_stop(FINE, Episode(), {1: 10 * MB, 2: 30 * MB}, 20 * MB)
    assert list(stops) == [2]
    assert stops[2] == (
        "disk limit exceeded: the job's files took 30 MB, more than JOB_MAX_DISK_MB (20 MB)"
    )


@given(
    st.lists(st.integers(0, 10**9), min_size=1, max_size=6),
    st.lists(st.integers(0, 10**9), min_size=1, max_size=6),
)
def test_a_job_that_did_not_grow_is_never_stopped_for_the_reserve(
    before: list[int], growth: list[int]
) -> None:
    episode = Episode()
    sizes = dict(enumerate(before))
    to_stop(FINE, episode, sizes, None)
    grown = {i: size + (growth[i] if i < len(growth) else 0) for i, size in sizes.items()}
    stops = to_stop(LOW, episode, grown, None)
    assert len(stops) <= 1
    for payload_id in stops:
        assert grown[payload_id] > sizes[payload_id]
        assert grown[payload_id] - sizes[payload_id] == max(grown[i] - sizes[i] for i in sizes)


def test_a_zip_streams_into_a_pipe(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("alpha\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.bin").write_bytes(os.urandom(300_000))
    read_fd, write_fd = os.pipe()
    received = bytearray()

    def drain() -> None:
        with os.fdopen(read_fd, "rb") as source:
            while chunk := source.read(65536):
                received.extend(chunk)

    reader = threading.Thread(target=drain)
    reader.start()
    with os.fdopen(write_fd, "wb") as sink:
        summary = stream_directory_zip(tmp_path, sink, manifest=True)
    reader.join()
    assert summary.files == 2
    with zipfile.ZipFile(io.BytesIO(bytes(received))) as archive:
        assert archive.testzip() is None
        assert archive.read("a.txt") == b"alpha\n"
        assert archive.read("sub/b.bin") == (tmp_path / "sub" / "b.bin").read_bytes()
