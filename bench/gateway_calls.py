"""Server-side CPU per retrieve call with many long-polls open on one client (issue 10).

`python -m bench.gateway_calls [--calls N] [--held N] [--rounds N]`: one real client
(testkit.harness) runs one payload (`sleep`); `--held` long-polls on it stay open (wait 60 s,
known Running) while 4 workers make `--calls` immediate retrieves (wait 0) through the same
NodeGateway, in this process. Prints this process's CPU (the gateway's side of every call)
and the client's per retrieve, one line per round. Not part of `python -m bench`: it times
the gateway alone, which the throughput case buries in everything else the server does.
To compare two versions, put a copy of the other `src/` first on PYTHONPATH.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import psutil

from job_orchestrator.config import NodeConfig
from job_orchestrator.server.gateway import NodeGateway
from job_orchestrator.status import Status
from testkit.harness import Cluster

WORKERS = 4


async def _measure(
    url: str, client: psutil.Process, root: Path, *, calls: int, held: int, rounds: int
) -> None:
    node = NodeConfig(f"{url}/submit", f"{url}/retrieve", f"{url}/kill")
    job = root / "job"
    job.mkdir()
    (job / "run.sh").write_text("sleep 600\n")
    gateway = NodeGateway(timeout_s=30.0)
    try:
        payload = await gateway.submit(node, job, dispatch_key="bench", token=None)
        sink = root / "unused.zip"
        for _ in range(100):  # until it runs (a retrieve is the lease it starts on)
            answer = await gateway.retrieve(
                node, payload, sink, wait_s=0, known=Status.UNKNOWN, token=None, key="bench"
            )
            if answer.status is Status.RUNNING:
                break
            await asyncio.sleep(0.05)

        async def hold() -> None:
            while True:
                await gateway.retrieve(
                    node, payload, sink, wait_s=60, known=Status.RUNNING, token=None, key="bench"
                )

        holders = [asyncio.create_task(hold()) for _ in range(held)]
        await asyncio.sleep(1.0)  # every long-poll has its connection
        remaining = 0

        async def work() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                await gateway.retrieve(
                    node, payload, sink, wait_s=0, known=Status.RUNNING, token=None, key="bench"
                )

        for round_number in range(rounds):
            remaining = calls
            client_before = sum(client.cpu_times()[:2])
            started, cpu = time.perf_counter(), time.process_time()
            await asyncio.gather(*(work() for _ in range(WORKERS)))
            cpu = time.process_time() - cpu
            elapsed = time.perf_counter() - started
            client_cpu = sum(client.cpu_times()[:2]) - client_before
            print(
                f"round {round_number + 1}: {calls} retrieves with {held} long-polls open: "
                f"gateway CPU {cpu / calls * 1e6:.0f} us/call, client CPU "
                f"{client_cpu / calls * 1e6:.0f} us/call, {calls / elapsed:.0f} calls/s",
                flush=True,
            )
        for task in holders:
            task.cancel()
        await asyncio.gather(*holders, return_exceptions=True)
        await gateway.kill(node, payload, token=None, key="bench")
    finally:
        await gateway.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--held", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-gateway-") as scratch:
        root = Path(scratch)
        running = Cluster(root)
        try:
            node = running.add_client({"MAX_CONCURRENT": "1"})
            assert node.process is not None
            process = psutil.Process(node.process.pid)
            asyncio.run(
                _measure(
                    node.url, process, root, calls=args.calls, held=args.held, rounds=args.rounds
                )
            )
        finally:
            leftovers = running.shutdown()
            if leftovers:
                print("job processes left running (killed):", *leftovers, sep="\n  ")


if __name__ == "__main__":
    main()
