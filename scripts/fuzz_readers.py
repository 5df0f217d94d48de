"""Fuzz every splatkit reader: N structure-aware mutations of real seeds per reader (tests/fuzz_harness.py), each
case in a worker process under a memory and time limit, and a table of how each reader answered.

A reader passes when it has 0 crashes: every case is either a clean one-line SplatkitError naming the file or an
accepted result that passes the sanity check. Crashing cases are listed (seed and mutations) and, with --save,
written out as folders to reproduce them with.

Usage: python scripts/fuzz_readers.py [--cases 10000] [--readers colmap-bin spz ...] [--jobs 2] [--seed 0]
       [--save crashes/]
Needs ../shared/datasets next to the checkout (the seeds are cut from its real files).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

from hypothesis import HealthCheck, Phase, given, seed, settings
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import fuzz_harness as fh  # noqa: E402  (lives with the tests, which run the same harness)


def fuzz(reader: str, cases: int, runner: fh.Runner, rng_seed: int
         ) -> tuple[Counter, list[tuple[fh.Case, fh.Outcome]], float]:
    """Outcome counts, the crashing (case, outcome) pairs and the wall time of `cases` cases of `reader`."""
    counts: Counter = Counter()
    crashes: list[tuple[fh.Case, fh.Outcome]] = []

    def done(case: fh.Case, outcome: fh.Outcome) -> None:
        counts[outcome.kind] += 1
        if outcome.kind == "crash":
            crashes.append((case, outcome))

    @seed(rng_seed)
    @settings(max_examples=cases, phases=[Phase.generate], deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=fh.cases(reader))
    def submit(case: fh.Case) -> None:
        runner.submit(case, done)  # returns at once while a worker is free: generation overlaps the runs

    start = time.perf_counter()
    submit()
    runner.drain()
    return counts, crashes, time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=10_000, help="cases per reader (default 10000)")
    parser.add_argument("--readers", nargs="+", choices=fh.available_readers(), default=fh.available_readers())
    parser.add_argument("--jobs", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--seed", type=int, default=0, help="hypothesis seed (default 0)")
    parser.add_argument("--timeout", type=float, default=fh.CASE_TIMEOUT, help="seconds before a case is a hang")
    parser.add_argument("--save", type=Path, help="write each crashing case's files into a folder here")
    args = parser.parse_args()
    if not fh.SHARED.is_dir():
        print(f"{fh.SHARED} not found: the seeds are cut from its real files", file=sys.stderr)
        return 2

    console = Console() if sys.stdout.isatty() else Console(width=100)  # a log file gets the table unwrapped
    table = Table(title=f"splatkit readers under fuzzing ({args.cases} cases each, seed {args.seed})")
    for column in ("reader", "cases", "clean one-line errors", "accepted", "crashes", "wall time", "cases/s"):
        table.add_column(column, justify="left" if column == "reader" else "right", no_wrap=True)
    all_crashes = []
    runner = fh.Runner(jobs=args.jobs, timeout=args.timeout)
    try:
        for reader in args.readers:
            counts, crashes, seconds = fuzz(reader, args.cases, runner, args.seed)
            total = sum(counts.values())
            console.print(f"{reader}: {total} cases, {counts['crash']} crashes, {seconds:.0f} s")
            table.add_row(reader, str(total), str(counts["error"]), str(counts["accepted"]),
                          f"[{'red' if crashes else 'green'}]{counts['crash']}", f"{seconds:.0f} s",
                          f"{total / seconds:.0f}")
            all_crashes += crashes
    finally:
        runner.close()
    console.print(table)
    for i, (case, outcome) in enumerate(all_crashes):
        console.print(f"crash: {case!r}: {outcome.detail}", markup=False, highlight=False, soft_wrap=True)
        if args.save:
            folder = args.save / f"{i:03d}-{case.seed.reader}"
            folder.mkdir(parents=True, exist_ok=True)
            case.tree.materialise(folder)
            (folder.parent / f"{folder.name}.txt").write_text(f"{case!r}\nentry: {case.seed.entry}\n{outcome.detail}\n")
    return 1 if all_crashes else 0


if __name__ == "__main__":
    sys.exit(main())
