"""`python -m bench`: run the cases, print the tables, write the results file."""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

from bench.bigfile import bigfile
from bench.common import FULL, QUICK, Context, SectionResult, load_average, log
from bench.containers import containers
from bench.fairness import fairness
from bench.idle import idle
from bench.latency import floor, latency
from bench.logs import logs
from bench.machine import describe
from bench.original import original
from bench.peers import peers
from bench.replicas import replicas
from bench.report import markdown, print_console
from bench.scale import scale
from bench.scheduler import scheduler
from bench.slurm import slurm
from bench.soak import soak
from bench.store import store
from bench.throughput import throughput

Case = Callable[[Context], SectionResult]
CASES: dict[str, Case] = {
    "floor": floor,
    "latency": latency,
    "throughput": throughput,
    "scheduler": scheduler,
    "store": store,
    "bigfile": bigfile,
    "fairness": fairness,
    "soak": soak,
    "logs": logs,
    "replicas": replicas,
    "idle": idle,
}
#: Cases run only when asked for (they need more than this repository: the original's
#: binary, the peers' own venv and Redis, a Slurm cluster, a container engine; or, for
#: scale, several minutes and a few thousand processes).
OPTIONAL: dict[str, Case] = {
    "original": original,
    "peers": peers,
    "slurm": slurm,
    "containers": containers,
    "scale": scale,
}
ALL_CASES = {**CASES, **OPTIONAL}
DEFAULT_OUTPUT = Path(__file__).with_name("RESULTS.md")


def _names(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = sorted(set(names) - set(ALL_CASES))
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown case(s) {', '.join(unknown) or '(none given)'}; choose from "
            f"{', '.join(ALL_CASES)}"
        )
    return names


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark job-orchestrator with real server and client processes.",
    )
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes (a smoke run); results go to a temp file"
    )
    parser.add_argument(
        "--only",
        type=_names,
        metavar="NAME[,NAME]",
        help=f"run only these cases: {', '.join(ALL_CASES)} (latency always measures its floor)",
    )
    parser.add_argument(
        "--original",
        action="store_true",
        help="also run `original`: the original Rust 2.2.3 (scripts/build-original) beside ours",
    )
    parser.add_argument(
        "--peers",
        action="store_true",
        help="also run `peers`: Celery + Redis and Galaxy Pulsar, installed into a venv of the "
        "bench's own (PEERS_VENV), same workload, compared with our latency and throughput",
    )
    parser.add_argument(
        "--output",
        type=Path,
        help="results file (default bench/RESULTS.md; with --quick a new temp file)",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="sample the server and client with py-spy during latency, throughput and bigfile; "
        "raw stacks and top-function summaries go to DIR",
    )
    parser.add_argument(
        "--replicas",
        type=int,
        default=3,
        metavar="N",
        help="the `replicas` case also measures N PostgreSQL replicas (default 3)",
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the scratch directory (logs, databases)"
    )
    return parser


def _selected(
    only: Sequence[str] | None, with_original: bool = False, with_peers: bool = False
) -> list[str]:
    wanted = set(only or CASES)
    if with_original:
        wanted.add("original")
    if with_peers:
        wanted.add("peers")
    if "latency" in wanted or "peers" in wanted:
        wanted.add("floor")  # the baseline is measured in the same run
    return [name for name in ALL_CASES if name in wanted]


def main(argv: Sequence[str] | None = None) -> int:
    arguments = parser().parse_args(argv)
    output: Path = arguments.output or (
        Path(tempfile.mkstemp(prefix="bench-results-", suffix=".md")[1])
        if arguments.quick
        else DEFAULT_OUTPUT
    )
    command = " ".join(["python -m bench", *(sys.argv[1:] if argv is None else argv)])
    machine = describe()
    workdir = Path(tempfile.mkdtemp(prefix="job-orchestrator-bench-"))
    ctx = Context(
        sizes=QUICK if arguments.quick else FULL,
        workdir=workdir,
        quick=arguments.quick,
        profile_dir=arguments.profile,
        replicas=max(1, arguments.replicas),
        with_original=arguments.original,
    )
    results: list[SectionResult] = []
    try:
        for name in _selected(arguments.only, arguments.original, arguments.peers):
            load = load_average()
            started = time.perf_counter()
            try:
                result = ALL_CASES[name](ctx)
            except Exception as error:
                traceback.print_exc()
                result = SectionResult(name, name, error=f"{type(error).__name__}: {error}")
            result.elapsed_s = time.perf_counter() - started
            result.notes.append(f"Load average (1/5/15 min) at the start of this case: {load}.")
            results.append(result)
            log(f"{name}: done in {result.elapsed_s:.1f} s")
    finally:
        if arguments.keep:
            log(f"scratch directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(markdown(machine, results, command, load_average()))
    print_console(machine, results, str(output))
    failed = [result.name for result in results if result.error is not None]
    if failed:
        log(f"cases that could not run: {', '.join(failed)}")
        return 1
    return 0
