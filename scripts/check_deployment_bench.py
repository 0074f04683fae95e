"""The benchmark through the real federation: each sub-task's result with ``bench --runtime deployment``
(every hospital a site service over Flower, TLS and authenticated SuperNodes; the client agents and
the training at the sites) beside ``--runtime simulation``, for the same models on the same
environment. Prints one row per (model, task, guidance) and exits 1 when the two differ or the
oracle scores below 100.

    python -m scripts.check_deployment_bench --env xray --task xray-pneumonia --guidance goal \\
        --models oracle,skyline --out runs/deployment-check
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from environments.concepts import ENVIRONMENTS
from eval.scoring import SUBTASKS


def bench(model: str, runtime: str, args: argparse.Namespace) -> tuple[dict[str, dict[str, bool]], float]:
    """Run one bench as a user runs it; returns (run key -> sub-task results, seconds)."""
    out = args.out / f"{runtime}-{model}"
    command = [sys.executable, "-m", "fedagentbench_cli", "bench", "--model", model, "--env", args.env, "--guidance",
               args.guidance, "--seed", str(args.seed), "--runtime", runtime, "--out", str(out)]
    if args.task:
        command += ["--task", args.task]
    started = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    results = {}
    for line in (out / "results.jsonl").read_text().splitlines():
        record = json.loads(line)
        key = record["key"]
        results[f"{key['task']} {key['guidance']} {key['mode']}"] = record["subtasks"]
    return results, time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="xray", choices=ENVIRONMENTS)
    parser.add_argument("--task", default=None, help="one task id (default: every task of the environment)")
    parser.add_argument("--guidance", default="goal", help="fine, goal or fine,goal")
    parser.add_argument("--models", default="oracle,skyline")
    parser.add_argument("--seed", type=int, default=0, help="environment seed")
    parser.add_argument("--out", type=Path, default=Path("runs/deployment-check"))
    args = parser.parse_args(argv)

    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"bench --runtime deployment vs simulation ({args.env}, seed {args.seed})")
    for col in ("model", "run", *SUBTASKS, "same", "seconds sim / dep"):
        table.add_column(col)
    ok = True
    for model in args.models.split(","):
        simulated, sim_s = bench(model, "simulation", args)
        deployed, dep_s = bench(model, "deployment", args)
        for run in sorted(simulated):
            same = simulated[run] == deployed.get(run)
            ok &= same and (model != "oracle" or all(deployed.get(run, {}).values()))
            cells = [f"{int(simulated[run][s])}/{int(deployed.get(run, {}).get(s, False))}" for s in SUBTASKS]
            table.add_row(model, run, *cells, "yes" if same else "NO", f"{sim_s:.0f} / {dep_s:.0f}")
    Console(width=200).print(table)
    print("cells: simulation/deployment (1 = sub-task passed)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
