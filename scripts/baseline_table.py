"""The README's baseline table: bench results folders of several models and environment seeds, pooled.

One row per model and mode over every task instance of every folder (environment seed x task x
guidance); sub-task columns are passes / instances; the CI is the report's bootstrap over instances.
C2's reported-only metrics (label-error recall, removal precision, clean images lost per client) are
averaged over the approved clients of all runs.

    python -m scripts.baseline_table runs/readme/*-2026 runs/readme/*-2027
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from statistics import mean

from eval.report import group_statistics
from eval.scoring import GRADER_VERSION, SUBTASKS
from eval.store import ResultStore, RunResult

ORDER = ("random", "heuristic", "skyline", "oracle")


def _c2_means(results: list[RunResult]) -> dict[str, str]:
    clients = [c for r in results for c in ((r.metrics.get("C2") or {}).get("clients") or {}).values()
               if "clean_lost" in c]

    def avg(name: str) -> str:
        values = [c[name] for c in clients if c.get(name) is not None]
        return f"{mean(values):.2f}" if values else "-"

    return {"label-error recall": avg("label_error_recall"), "removal precision": avg("removal_precision"),
            "clean lost / client": avg("clean_lost")}


def table(folders: list[Path]) -> str:
    results = [r for folder in folders for r in ResultStore(folder).load(GRADER_VERSION)]
    seeds = sorted({r.env_seed for r in results if r.env_seed is not None})
    groups: dict[tuple[str, str], list[RunResult]] = {}
    for r in results:
        groups.setdefault((r.key.model, r.key.mode), []).append(r)
    head = (["model", "mode", "instances", *SUBTASKS, "overall", "95 % CI", "label-error recall",
             "removal precision", "clean lost / client"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    rank = {m: i for i, m in enumerate(ORDER)}
    for (model, mode), rs in sorted(groups.items(), key=lambda kv: (rank.get(kv[0][0], 99), kv[0])):
        s = group_statistics(rs)
        n = s["instances"]
        ci = "-" if s["ci_low"] is None else f"[{s['ci_low']:.1f}, {s['ci_high']:.1f}]"
        cells = [model, mode, str(n), *(f"{s[t]}/{n}" for t in SUBTASKS), f"{s['overall']:.2f}", ci,
                 *_c2_means(rs).values()]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append(f"\nenvironment seeds: {', '.join(map(str, seeds)) or 'unrecorded'}; folders: "
                 + ", ".join(str(f) for f in folders))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path, help="bench --out folders")
    args = parser.parse_args(argv)
    print(table(args.folders))
    return 0


if __name__ == "__main__":
    sys.exit(main())
