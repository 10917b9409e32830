"""idle: CPU of a server and a client with nothing to do (their background loops only)."""

from __future__ import annotations

import time

from bench.common import Context, SectionResult, cpu_snapshot, log, processes, running_cluster

IDLE_S = 10.0
SETTLE_S = 2.0
#: "About zero": under half a percent of one core each.
IDLE_TARGET_PERCENT = 0.5


def idle(ctx: Context) -> SectionResult:
    seconds = IDLE_S if not ctx.quick else 3.0
    result = SectionResult(
        "idle",
        "Idle: CPU of a server and a client with no jobs",
        f"default settings, one client; {SETTLE_S:g} s after start-up, then CPU time of each "
        f"process over {seconds:g} s (background loops: health checks, lease, cleaners)",
    )
    log(f"idle: {seconds:g} s")
    with running_cluster(ctx.workdir / "idle") as running:
        procs = processes(running)
        time.sleep(SETTLE_S)
        before = cpu_snapshot(procs)
        time.sleep(seconds)
        after = cpu_snapshot(procs)
    wall = after.wall - before.wall
    for name in procs:
        used = after.own[name] - before.own[name]
        percent = 100 * used / wall
        result.add(f"{name} CPU while idle", f"{percent:.2f}% of one core ({used * 1000:.0f} ms)")
        result.target(
            f"{name} idle CPU < {IDLE_TARGET_PERCENT:g}% of one core",
            f"{percent:.2f}%",
            percent < IDLE_TARGET_PERCENT,
        )
    return result
