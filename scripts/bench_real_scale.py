"""Benchmark (not a test): is ``--scale real`` fast enough to use, and do trainings queue needlessly?

For each environment, ``fedagentbench bench --model oracle --scale real`` runs its whole task set
(end to end, fine guidance) as a user runs it: the CLI as a subprocess, the environment built from
the real pools, every task trained with Flower and scored on the held-out set. Printed per
environment and ``--concurrency`` level:

- wall time of the command (environment build included) — the target is under 15 minutes;
- how busy the machine's CPUs were meanwhile (``/proc/stat``; 100 % = every core working);
- the trainings: how many, their own wall time, and how long they waited behind other runs'
  trainings (``queue_wait_s``, recorded by ``tools.training``). Trainings run one at a time per
  process and each uses every core (one Ray actor per core, hospitals in parallel), so a wait costs
  nothing as long as the CPUs stay busy; idle CPUs during waits would mean needless queueing.

    OMP_NUM_THREADS=1 .venv/bin/python -m scripts.bench_real_scale --seed 21 --levels 1,4
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from environments.concepts import ENVIRONMENTS

REPO = Path(__file__).resolve().parents[1]


def _cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def run_bench(env: str, seed: int, rounds: int, concurrency: int, out: Path, data_dir: str) -> dict:
    """One environment's full task set with the oracle; wall time and CPU busy fraction."""
    command = [sys.executable, "-m", "fedagentbench_cli", "bench", "--model", "oracle", "--env", env,
               "--scale", "real", "--seed", str(seed), "--rounds", str(rounds), "--guidance", "fine",
               "--mode", "e2e", "--concurrency", str(concurrency), "--out", str(out), "--data-dir", data_dir]
    busy0, total0 = _cpu_times()
    started = time.perf_counter()
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    wall = time.perf_counter() - started
    busy1, total1 = _cpu_times()
    if proc.returncode != 0:
        raise SystemExit(f"{env}: bench failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    lines = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines() if line.strip()]
    results = [json.loads(p.read_text()) for p in (out / "envs").rglob("result.json") if "/runs/" in p.as_posix()]
    trainings = [r for r in results if "queue_wait_s" in r]  # the launch tool's results (not Flower's own)
    ratios = [(r.get("outcome") or {}).get("ratio") for r in lines]
    return {
        "environment": env, "concurrency": concurrency, "runs": len(lines), "wall_s": round(wall, 1),
        "cpu_busy": round((busy1 - busy0) / max(1, total1 - total0), 3),
        "passed": sum(1 for r in lines if r.get("subtasks") and all(r["subtasks"].values()) and not r.get("failed")),
        "trainings": len(trainings),
        "training_s": round(sum(t.get("wall_time_s", 0.0) for t in trainings), 1),
        "queue_wait_s": round(sum(t.get("queue_wait_s", 0.0) for t in trainings), 1),
        "max_queue_wait_s": round(max((t.get("queue_wait_s", 0.0) for t in trainings), default=0.0), 1),
        "oracle_ratio": sorted({r for r in ratios if r is not None}),
    }


def main() -> int:
    from rich.console import Console
    from rich.table import Table

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--envs", default=",".join(ENVIRONMENTS))
    parser.add_argument("--seed", type=int, default=21, help="environment seed")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--levels", default="1", help="--concurrency levels (comma-separated)")
    parser.add_argument("--data-dir", default=str(REPO.parent / "shared" / "datasets"))
    parser.add_argument("--out", type=Path, default=Path("runs/bench_real_scale"))
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    console = Console(width=150)
    rows = []
    for level in [int(v) for v in args.levels.split(",")]:
        for env in args.envs.split(","):
            out = (args.out / f"c{level}" / env).resolve()
            shutil.rmtree(out, ignore_errors=True)
            row = run_bench(env, args.seed, args.rounds, level, out, args.data_dir)
            rows.append(row)
            console.print(f"{env} --concurrency {level}: {row['wall_s']:.0f} s, CPU busy {row['cpu_busy']:.0%}, "
                          f"{row['trainings']} trainings ({row['training_s']:.0f} s), queue {row['queue_wait_s']:.0f} s")
    table = Table(title=f"oracle, whole task set, --scale real, seed {args.seed}, {args.rounds} rounds, "
                        f"{os.cpu_count()} CPUs")
    for col in ("environment", "--concurrency", "runs (all passed)", "wall s (build incl.)", "CPU busy",
                "trainings", "training s", "waited for another training s (max)", "oracle ratio"):
        table.add_column(col, justify="left" if col == "environment" else "right")
    for r in rows:
        table.add_row(r["environment"], str(r["concurrency"]), f"{r['runs']} ({r['passed']})", f"{r['wall_s']:.0f}",
                      f"{r['cpu_busy']:.0%}", str(r["trainings"]), f"{r['training_s']:.0f}",
                      f"{r['queue_wait_s']:.0f} ({r['max_queue_wait_s']:.0f})",
                      ", ".join(f"{v:g}" for v in r["oracle_ratio"]) or "-")
    console.print(table)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=1) + "\n", "utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
