"""What the tests and the benchmarks share; not part of the installed package.

- `waiting`: `eventually(predicate, what, timeout_s)`, the one polling loop (and
  `eventually_async` for coroutine predicates).
- `prerequisites`: `require(tool)` and `unavailable(reason)`: skip locally, fail when `CI=true`.
- `harness`: real `job-orchestrator server` and `client` processes (`Cluster`, `Api`).
- `original`: the original Rust job-orchestrator beside ours (`Fleet`).
- `pg`: real PostgreSQL (a fresh database per test, a private instance, the store fixtures).

It lives at the repository root beside `tests/` and `bench/`, outside `src/`, so the wheel
never ships it, and `bench/` imports it without importing `tests`.
"""

from __future__ import annotations

from testkit.prerequisites import require, unavailable
from testkit.waiting import eventually, eventually_async

__all__ = ["eventually", "eventually_async", "require", "unavailable"]
