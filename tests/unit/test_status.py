"""The status model: wire (PascalCase JSON) and storage (lower-case) forms, and the status sets.

Covers UPSTREAM §2.1 and §14 "models/status_dto.rs" (display, case-insensitive parsing,
unrecognised -> Unknown, round trips, equality).
"""

from __future__ import annotations

import json

import pytest

from job_orchestrator.status import (
    ON_CLIENT,
    SLOT_HOLDING,
    TERMINABLE,
    TERMINAL,
    Status,
)

WIRE = [
    "Queued",
    "Processing",
    "Submitted",
    "Prepared",
    "Running",
    "Completed",
    "Failed",
    "Invalid",
    "Unknown",
    "Locked",
    "Killed",
    "Cleaned",
]


def test_exactly_twelve_statuses_with_the_upstream_wire_names() -> None:
    assert len(Status) == 12
    assert sorted(status.wire for status in Status) == sorted(WIRE)


@pytest.mark.parametrize("wire", WIRE)
def test_wire_form_is_pascal_case(wire: str) -> None:
    status = Status[wire.upper()]
    assert status.wire == wire
    assert status.value == wire
    # What the JSON bodies carry: a bare PascalCase string.
    assert json.dumps(status.wire) == f'"{wire}"'


# test_display_{prepared,processing,completed,failed,invalid,locked,queued,submitted,unknown,
# cleaned,running} and the one upstream has no test for (killed).
@pytest.mark.parametrize(
    ("status", "db"),
    [
        (Status.PREPARED, "prepared"),
        (Status.PROCESSING, "processing"),
        (Status.COMPLETED, "completed"),
        (Status.FAILED, "failed"),
        (Status.INVALID, "invalid"),
        (Status.LOCKED, "locked"),
        (Status.QUEUED, "queued"),
        (Status.SUBMITTED, "submitted"),
        (Status.UNKNOWN, "unknown"),
        (Status.CLEANED, "cleaned"),
        (Status.RUNNING, "running"),
        (Status.KILLED, "killed"),
    ],
)
def test_db_form_is_lower_case(status: Status, db: str) -> None:
    assert status.db == db


@pytest.mark.parametrize("status", list(Status))
def test_from_db_lowercase(status: Status) -> None:
    assert Status.from_db(status.wire.lower()) is status


@pytest.mark.parametrize("status", list(Status))
def test_from_db_uppercase(status: Status) -> None:
    assert Status.from_db(status.wire.upper()) is status


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("ComPlEtEd", Status.COMPLETED),
        ("pRePaReD", Status.PREPARED),
        ("Queued", Status.QUEUED),
        ("KILLED", Status.KILLED),
        ("rUnNiNg", Status.RUNNING),
    ],
)
def test_from_db_mixed_case(text: str, expected: Status) -> None:
    assert Status.from_db(text) is expected


@pytest.mark.parametrize(
    "text",
    [
        "pending",  # test_from_string_unrecognized
        "",  # test_from_string_empty
        " ",  # test_from_string_whitespace
        "\t\n",
        " pending ",  # test_from_string_with_whitespace
        " queued",  # no trimming: a known name with whitespace is still unknown
        "completed ",
        "done",
        "Complete",
        "queued\x00",
    ],
)
def test_from_db_unrecognised_is_unknown(text: str) -> None:
    assert Status.from_db(text) is Status.UNKNOWN


def test_from_db_prepared() -> None:
    assert Status.from_db("prepared") is Status.PREPARED


@pytest.mark.parametrize("status", list(Status))
def test_roundtrip_db(status: Status) -> None:
    assert Status.from_db(status.db) is status


@pytest.mark.parametrize("status", list(Status))
def test_roundtrip_wire(status: Status) -> None:
    assert Status.from_wire(status.wire) is status
    assert Status.from_wire(json.loads(json.dumps(status.wire))) is status


@pytest.mark.parametrize("wire", WIRE)
def test_from_wire_exact(wire: str) -> None:
    assert Status.from_wire(wire).wire == wire


@pytest.mark.parametrize(
    "text",
    ["completed", "COMPLETED", "ComPlEtEd", "queued", " Queued", "Queued ", "", "Pending"],
)
def test_from_wire_is_case_sensitive_and_strict(text: str) -> None:
    with pytest.raises(ValueError, match=r"."):
        Status.from_wire(text)


def test_status_equality() -> None:
    completed, failed = Status.from_db("completed"), Status.from_db("failed")
    assert completed == Status.COMPLETED
    assert completed != failed
    assert Status.from_db("completed") == Status.from_wire("Completed")
    assert len({Status.from_db(s.db) for s in Status}) == 12


# --- status sets -------------------------------------------------------------------------------


def test_terminal_set() -> None:
    assert (
        frozenset({Status.COMPLETED, Status.FAILED, Status.INVALID, Status.KILLED, Status.CLEANED})
        == TERMINAL
    )


@pytest.mark.parametrize("status", list(Status))
def test_is_terminal_matches_the_set(status: Status) -> None:
    assert status.is_terminal() is (status in TERMINAL)


def test_slot_holding_set() -> None:
    # Deliberate fix: upstream counted only processing/submitted/running.
    assert (
        frozenset(
            {Status.PROCESSING, Status.SUBMITTED, Status.PREPARED, Status.RUNNING, Status.LOCKED}
        )
        == SLOT_HOLDING
    )


def test_on_client_set() -> None:
    assert frozenset({Status.SUBMITTED, Status.PREPARED, Status.RUNNING}) == ON_CLIENT


def test_terminable_set() -> None:
    assert (
        frozenset(
            {
                Status.QUEUED,
                Status.PROCESSING,
                Status.SUBMITTED,
                Status.PREPARED,
                Status.RUNNING,
                Status.LOCKED,
            }
        )
        == TERMINABLE
    )


def test_set_relations() -> None:
    assert not SLOT_HOLDING & TERMINAL
    assert not TERMINABLE & TERMINAL
    assert ON_CLIENT <= SLOT_HOLDING
    assert SLOT_HOLDING <= TERMINABLE
    assert SLOT_HOLDING | {Status.QUEUED} == TERMINABLE
    # Queued waits for a slot, Unknown is neither active nor final-by-set.
    assert Status.QUEUED not in SLOT_HOLDING
    assert Status.UNKNOWN not in SLOT_HOLDING | TERMINAL | TERMINABLE
    assert TERMINAL | TERMINABLE | {Status.UNKNOWN} == frozenset(Status)


@pytest.mark.parametrize("collection", [TERMINAL, SLOT_HOLDING, ON_CLIENT, TERMINABLE])
def test_sets_are_immutable(collection: frozenset[Status]) -> None:
    assert isinstance(collection, frozenset)


def test_str_is_the_wire_string() -> None:
    """`print(job.status)` shows `Failed`, as users and the SDK's examples expect (issue 25)."""
    assert str(Status.FAILED) == "Failed"
    assert f"{Status.QUEUED}" == "Queued"
    assert all(str(status) == status.wire for status in Status)
