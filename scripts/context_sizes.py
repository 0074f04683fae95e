"""How big the benchmark's conversations are: prompt tokens per role and scale, and the window each needs.

Runs the key-blind skyline through the agents' message path (``fedagentbench bench --model skyline``,
the CLI as a subprocess: the same prompts, tool schemas, tool outputs and turns a model would get),
then reads every model call's request size from the transcripts (``context.estimated_prompt_tokens``
of each assistant event: messages plus tool schemas at ~4 characters a token, as
``count_tokens_approximately``; a real tokenizer counts JSON and paths somewhat finer). A model makes
more calls than the skyline, so these are floors.

    python -m scripts.context_sizes --scales tiny,small,real --seed 3 --out /tmp/context-sizes
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from eval.scoring import SUBTASKS as ROLES  # one agent role per sub-task

#: one task per environment, as ``make bench`` runs them
TASKS = ("derm-skin-cancer,us-breast-malignancy,fundus-dr-grading,histo-breast-cancer,mri-tumour-type,"
         "xray-pneumonia")


def run_scale(scale: str, seed: int, out: Path, guidance: str) -> Path:
    folder = out / f"skyline-{scale}-seed{seed}"
    cmd = [sys.executable, "-m", "fedagentbench_cli", "bench", "--model", "skyline", "--scale", scale,
           "--seed", str(seed), "--guidance", guidance, "--task", TASKS, "--out", str(folder)]
    subprocess.run(cmd, check=True, cwd=Path(__file__).resolve().parents[1], env=os.environ.copy())
    return folder


def request_sizes(folder: Path) -> dict[str, list[int]]:
    """Estimated prompt tokens of every model call, by role."""
    sizes: dict[str, list[int]] = {role: [] for role in ROLES}
    for path in sorted((folder / "transcripts").glob("*.jsonl")):
        for line in path.read_text("utf-8").splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            tokens = (event.get("context") or {}).get("estimated_prompt_tokens")
            if event.get("kind") == "assistant" and tokens:
                sizes.setdefault(event["role"], []).append(int(tokens))
    return sizes


def percentile(values: list[int], q: float) -> int:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def window_needed(largest: int, reply: int) -> int:
    """The smallest power-of-two window that holds the largest request and a ``reply``-token answer."""
    window = 2048
    while window < largest + reply:
        window *= 2
    return window


def main() -> int:
    from agents.context import DEFAULT_MAX_OUTPUT, MIN_OUTPUT

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scales", default="tiny,small,real")
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--guidance", default="fine", help="fine (the longer prompts), goal or fine,goal")
    parser.add_argument("--out", type=Path, default=Path("runs/context-sizes"))
    parser.add_argument("--reuse", action="store_true", help="read existing results folders, run nothing")
    args = parser.parse_args()
    rows = []
    for scale in args.scales.split(","):
        folder = args.out / f"skyline-{scale}-seed{args.seed}"
        if not args.reuse:
            folder = run_scale(scale, args.seed, args.out, args.guidance)
        for role, values in request_sizes(folder).items():
            if values:
                rows.append({"role": role, "scale": scale, "calls": len(values), "p50": round(statistics.median(values)),
                             "p95": percentile(values, 0.95), "max": max(values)})
    short, long = f"window, {MIN_OUTPUT:,}-token reply", f"window, {DEFAULT_MAX_OUTPUT:,}-token reply (thinking)"
    table = Table(title=f"prompt tokens per model call (skyline, seed {args.seed}, {args.guidance} guidance; "
                        "window = smallest power of two holding the largest call and the reply)")
    for col in ("role", "scale", "calls", "p50", "p95", "max", short, long):
        table.add_column(col, justify="left" if col in ("role", "scale") else "right")
    lines = [f"| role | scale | calls | p50 | p95 | max | {short} | {long} |", "|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (ROLES.index(r["role"]), args.scales.split(",").index(r["scale"]))):
        needs = [window_needed(r["max"], reply) for reply in (MIN_OUTPUT, DEFAULT_MAX_OUTPUT)]
        table.add_row(r["role"], r["scale"], str(r["calls"]), str(r["p50"]), str(r["p95"]), str(r["max"]),
                      *(str(n) for n in needs))
        lines.append(f"| {r['role']} | {r['scale']} | {r['calls']} | {r['p50']:,} | {r['p95']:,} | {r['max']:,} | "
                     f"{needs[0]:,} | {needs[1]:,} |")
    Console(width=140).print(table)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
