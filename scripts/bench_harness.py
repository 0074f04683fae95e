"""Benchmark (not a test) of the benchmark harness itself.

1. Wall time of the full tiny matrix with the oracle: 6 environments x all tasks x 2 guidance styles
   x 1 run, end to end, 1 training round (target: under 15 minutes on a 2-core machine).
2. Harness overhead per agent step, excluding model time (and tool time): from the same runs.
3. Speed-up of --concurrency 16 over 1 on 16 runs (two X-ray tasks x two guidance styles x four
   repeats) with a scripted model that waits one second per call (target >= 14x), as a hosted model
   behind an API would. A warm-up pass builds the environment and fills the training cache first
   (identical trainings are served from it), so the measurement is of the harness under model
   latency, not of Flower.

    OMP_NUM_THREADS=1 .venv/bin/python -m scripts.bench_harness [--out runs/harness] [--skip-matrix]
    OMP_NUM_THREADS=1 .venv/bin/python -m scripts.bench_harness --no-matrix   # step 3 only
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import time
from pathlib import Path

from fedagentbench_cli import quiet_environment


def run(spec) -> tuple[float, list]:
    from eval.bench import run_matrix

    t0 = time.perf_counter()
    results = asyncio.run(run_matrix(spec))
    return time.perf_counter() - t0, results


def matrix_table(args, envs_dir: Path, cache: Path, table) -> None:
    """Steps 1 and 2: the full oracle tiny matrix, cold, and the harness overhead per step."""
    from eval.bench import BenchSpec
    from eval.report import overall_score

    matrix_spec = BenchSpec(model="oracle", out=envs_dir, rounds=1, concurrency=1)
    if not args.skip_matrix:  # a cold start: no finished runs, no cached trainings
        shutil.rmtree(envs_dir, ignore_errors=True)
        shutil.rmtree(cache, ignore_errors=True)
    seconds, results = run(matrix_spec)
    trainings = len(list(cache.glob("*.json"))) if cache.is_dir() else 0
    passes = sum(sum(r.subtasks.values()) for r in results)
    steps = sum(r.usage.get("agent_steps", 0) for r in results)
    loop = sum(r.usage.get("agent_seconds", 0) - r.usage.get("model_seconds", 0) - r.usage.get("tool_seconds", 0)
               for r in results)
    table.add_row("oracle tiny matrix: runs", str(len(results)))
    table.add_row("oracle tiny matrix: wall time (s)" + (" [reused]" if args.skip_matrix else ""), f"{seconds:.1f}")
    table.add_row("oracle tiny matrix: overall score (%)", f"{overall_score(passes, len(results)):.2f}")
    table.add_row("distinct trainings run (identical ones served from the cache)", str(trainings))
    table.add_row("agent steps", str(steps))
    table.add_row("agent-loop overhead per step, excl. model and tools (ms)", f"{1000 * loop / max(1, steps):.2f}")
    table.add_row("mean wall time per run (s)", f"{sum(r.wall_seconds for r in results) / max(1, len(results)):.2f}")


def main() -> int:
    quiet_environment()
    from rich.console import Console
    from rich.table import Table

    from environments.tasks import tasks_for
    from eval.bench import BenchSpec

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/harness"))
    parser.add_argument("--skip-matrix", action="store_true", help="reuse step 1's results and cache")
    parser.add_argument("--no-matrix", action="store_true", help="skip steps 1 and 2: measure concurrency only")
    parser.add_argument("--levels", default="1,16", help="concurrency levels to time (the first is the reference)")
    args = parser.parse_args()
    console = Console()
    cache = (args.out / "training_cache").resolve()
    os.environ["FEDAGENTBENCH_TRAINING_CACHE"] = str(cache)
    envs_dir = args.out / "oracle"

    table = Table(title="harness benchmark")
    table.add_column("measure")
    table.add_column("value", justify="right")
    if not args.no_matrix:
        matrix_table(args, envs_dir, cache, table)

    # concurrency: 16 runs of the same environment, trainings from the cache, 1 s per model call
    levels = [int(x) for x in args.levels.split(",")]
    tasks = [t.task_id for t in tasks_for("xray")[:2]]

    def spec_for(concurrency: int, out: Path):
        return BenchSpec(model="oracle", out=out, rounds=1, concurrency=concurrency, environments=["xray"],
                         tasks=tasks, guidance=["fine", "goal"], runs=4)

    warm = args.out / "warm-up"
    shutil.rmtree(warm, ignore_errors=True)
    run(spec_for(max(levels), warm))  # builds the environment, fills the training cache
    os.environ["FEDAGENTBENCH_BASELINE_DELAY_S"] = "1"
    timings = {}
    for concurrency in levels:
        out = args.out / f"concurrency{concurrency}"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        (out / "envs").symlink_to((warm / "envs").resolve())
        t, rs = run(spec_for(concurrency, out))
        calls = sum(r.usage.get("agent_steps", 0) for r in rs)
        timings[concurrency] = (t, len(rs), calls)
        console.print(f"--concurrency {concurrency}: {len(rs)} runs, {calls} model calls, {t:.1f} s")
    os.environ.pop("FEDAGENTBENCH_BASELINE_DELAY_S")
    for c, (t, n, calls) in timings.items():
        table.add_row(f"--concurrency {c}: {n} runs, {calls} model calls of 1 s (wall s)", f"{t:.1f}")
    ref = levels[0]
    for c in levels[1:]:
        table.add_row(f"speed-up of --concurrency {c} over {ref}", f"{timings[ref][0] / timings[c][0]:.2f}x")
    console.print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
