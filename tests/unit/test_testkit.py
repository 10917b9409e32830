"""testkit's own rules: what eventually() returns and says, and require()'s skip-or-fail."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from testkit import eventually, eventually_async, require, unavailable

MISSING_TOOL = "jo-testkit-no-such-program"


def test_eventually_returns_the_first_truthy_value() -> None:
    calls = itertools.count(1)
    assert eventually(lambda: [n] if (n := next(calls)) >= 3 else [], "three calls", poll_s=0) == [
        3
    ]


def test_eventually_names_what_it_waited_for_and_the_last_value() -> None:
    with pytest.raises(AssertionError, match=r"waiting for the answer; last: 0\nthe log") as info:
        eventually(lambda: 0, "the answer", timeout_s=0, detail=lambda: "the log")
    assert "timed out" in str(info.value)


def test_eventually_retries_only_the_exceptions_it_is_told_are_not_yet() -> None:
    attempts = iter([ConnectionError("refused"), ConnectionError("refused"), "up"])

    def probe() -> str:
        outcome = next(attempts)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    assert eventually(probe, "the server", poll_s=0, retry_on=(ConnectionError,)) == "up"

    def buggy() -> bool:
        raise ValueError("a bug")

    with pytest.raises(ValueError, match="a bug"):
        eventually(buggy, "a bug to be retried", retry_on=(OSError,))


def test_eventually_async_awaits_the_predicate() -> None:
    calls = itertools.count(1)

    async def third() -> int | None:
        n = next(calls)
        return n if n >= 3 else None

    assert asyncio.run(eventually_async(third, "three calls", poll_s=0)) == 3
    with pytest.raises(AssertionError, match="waiting for nothing"):
        asyncio.run(eventually_async(lambda: asyncio.sleep(0, None), "nothing", timeout_s=0))


def test_require_finds_a_program_on_path() -> None:
    assert require("bash").endswith("/bash")


def test_a_missing_tool_skips_locally(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(
        pytest.skip.Exception, match=f"{MISSING_TOOL} is not installed \\(a hint\\)"
    ):
        require(MISSING_TOOL, "a hint")


def test_a_missing_tool_fails_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=f"CI=true but {MISSING_TOOL} is not installed"):
        require(MISSING_TOOL)
    with pytest.raises(pytest.fail.Exception, match="CI=true but no PostgreSQL"):
        unavailable("no PostgreSQL")
