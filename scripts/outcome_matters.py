"""Benchmark (not a test): do the agents' operations show in what the federation learns?

On a ``real``-scale environment, the oracle's harmonised data (the answer key's clean files in
target-class folders, as ``graphs.upstream.gold_harmonised`` writes them) is trained and scored on
the held-out test set, beside degraded pipelines built from the same environment:

- ``label errors kept``: the key's mislabelled files are added back under the label the site gave them;
- ``no cleaning``: every decodable file cleaning should remove (duplicates, off-topic images,
  label errors) is kept, each under the label its site gave it;
- ``labels mapped wrongly``: at every other hospital the first two target classes are swapped
  (a wrong label mapping in C3);
- and, on the oracle's data, the algorithm choice (FedAvg against ``--algorithms``). A personalised
  algorithm's outcome is the mean over its hospitals' own models (``eval.outcome``).

Every variant trains with the same rounds and several seeds; the table shows mean ± sd of the
held-out balanced accuracy and AUROC, and of the ratio to the oracle's mean.

    OMP_NUM_THREADS=1 .venv/bin/python -m scripts.outcome_matters --env xray --seeds 0,1,2 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

from fedagentbench_cli import quiet_environment


def _place(workspace: Path, out: Path, env_key, task_key, hospital: str, issues: set[str]) -> int:
    """Add ``hospital``'s files with one of ``issues`` to the harmonised folder ``out`` under the
    target class of the label their site gave them; returns how many were added."""
    from environments.readers import ImageReadError, read_image
    from graphs.upstream import _write_png, flat_name, standardise

    schema = task_key.target_schema
    added = 0
    for ds in env_key.datasets:
        if ds.hospital != hospital or ds.name not in task_key.relevant_datasets.get(hospital, []):
            continue
        mapping = task_key.label_mappings.get(hospital, {}).get(ds.name, {})
        for f in ds.files:
            if f.kind != "image" or f.issue not in issues or f.site_label is None:
                continue
            target = mapping.get(f.site_label)
            if target is None:
                continue
            try:
                pixels = standardise(read_image(workspace / f.path), schema.image_size, schema.mode)
            except ImageReadError:
                continue
            _write_png(out / target / f"kept__{ds.name}__{flat_name(f.path)}", pixels)
            added += 1
    return added


def build_variant(name: str, env_dir: Path, task_id: str, dest: Path) -> tuple[dict[str, Path], str]:
    """Each approved hospital's training folder for variant ``name``; and a note on what changed."""
    from environments.answer_key import load_environment_key, load_task_key
    from graphs.upstream import gold_harmonised

    env_key, key = load_environment_key(env_dir), load_task_key(env_dir, task_id)
    dirs, changed = {}, 0
    for i, hospital in enumerate(sorted(key.approved_hospitals)):
        workspace = env_dir / "clients" / hospital
        out = dest / hospital
        gold_harmonised(workspace, out, key, hospital)
        if name == "label errors kept":
            changed += _place(workspace, out, env_key, key, hospital, {"label_error"})
        elif name == "no cleaning":
            changed += _place(workspace, out, env_key, key, hospital, {"label_error", "duplicate", "off_topic"})
        elif name == "labels mapped wrongly" and i % 2 == 1:
            a, b = key.target_schema.classes[:2]
            (out / a).rename(out / "_swap")
            (out / b).rename(out / a)
            (out / "_swap").rename(out / b)
            changed += sum(1 for _ in (out / a).iterdir()) + sum(1 for _ in (out / b).iterdir())
        dirs[hospital] = out
    return dirs, f"{changed} files changed"


def train_and_score(env_dir: Path, task_id: str, dirs: dict[str, Path], algorithm: str, rounds: int, seed: int,
                    folder: Path) -> dict:
    from eval.outcome import evaluate_training
    from fl.runner import ClientSpec, TrainConfig, run_training_warm

    shutil.rmtree(folder, ignore_errors=True)
    config = TrainConfig(clients=[ClientSpec(name=h, data_dir=d) for h, d in sorted(dirs.items())],
                         algorithm=algorithm, rounds=rounds, seed=seed, out_dir=folder / "flower")
    result = run_training_warm(config).model_dump(mode="json", by_alias=True)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "result.json").write_text(json.dumps(result))
    outcome = evaluate_training(env_dir, task_id, folder)
    local = (result.get("final") or {}).get("clients") or {}
    local_ba = [c["balanced_accuracy"] for c in local.values() if c.get("balanced_accuracy") is not None]
    return {"ba": outcome.balanced_accuracy, "auroc": outcome.auroc, "model": outcome.model,
            "local_ba": statistics.mean(local_ba) if local_ba else None}


def mean_sd(values: list[float | None]) -> str:
    vals = [v for v in values if v is not None]
    if not vals:
        return "-"
    return f"{statistics.mean(vals):.3f} ± {statistics.stdev(vals):.3f}" if len(vals) > 1 else f"{vals[0]:.3f}"


def main() -> int:
    quiet_environment()
    from rich.console import Console
    from rich.table import Table

    from environments.builder import build_environment
    from environments.tasks import tasks_for
    from fl.service import close_shared

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="xray")
    parser.add_argument("--task", default=None, help="task id (default: the environment's first task)")
    parser.add_argument("--env-seed", type=int, default=7)
    parser.add_argument("--seeds", default="0,1,2", help="training seeds")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--data-dir", default="../shared/datasets")
    parser.add_argument("--out", type=Path, default=Path("runs/outcome_matters"))
    parser.add_argument("--algorithms", default="FedBN,FedProx",
                        help="algorithms trained on the oracle's data besides FedAvg")
    parser.add_argument("--pipelines", default="label errors kept,no cleaning,labels mapped wrongly",
                        help="degraded pipelines to train (comma-separated; empty: none)")
    args = parser.parse_args()
    console = Console()
    seeds = [int(s) for s in args.seeds.split(",")]
    task = next(t for t in tasks_for(args.env) if args.task in (None, t.task_id))
    envs = args.out / "envs"
    if not (envs / args.env / "environment.json").is_file():
        build_environment(args.env, "real", args.env_seed, envs, data_dir=args.data_dir)
    env_dir = (envs / args.env).resolve()
    manifest = json.loads((env_dir / "environment.json").read_text())
    console.print(f"{args.env} real scale, env seed {args.env_seed}, pool {manifest['pool']['kind']}, "
                  f"{manifest['counts']['images']} images at {manifest['counts']['hospitals']} hospitals, "
                  f"{manifest['counts']['heldout_test_images']} held out; task {task.task_id} "
                  f"({task.requirement}); {args.rounds} rounds, seeds {seeds}")

    variants = [("oracle", "FedAvg")] + [(p, "FedAvg") for p in args.pipelines.split(",") if p]
    variants += [("oracle", a) for a in args.algorithms.split(",") if a and a != "FedAvg"]
    rows = []
    t0 = time.perf_counter()
    try:
        for name, algorithm in variants:
            data = args.out / "data" / name.replace(" ", "_")
            dirs, note = build_variant(name, env_dir, task.task_id, data)
            scores = [train_and_score(env_dir, task.task_id, dirs, algorithm, args.rounds, s,
                                      args.out / "train" / f"{name.replace(' ', '_')}-{algorithm}-s{s}") for s in seeds]
            rows.append((name, algorithm, note, scores))
            console.print(f"{name} / {algorithm}: {mean_sd([s['ba'] for s in scores])} ({time.perf_counter() - t0:.0f} s)")
    finally:
        close_shared()
    reference = statistics.mean(s["ba"] for s in rows[0][3] if s["ba"] is not None)
    table = Table(title=f"held-out outcome by pipeline ({args.env}, {task.task_id}, {len(seeds)} seeds, "
                        f"{args.rounds} rounds; mean ± sd)")
    for col in ("pipeline", "algorithm", "change", "scored model", "balanced accuracy", "AUROC", "ratio to oracle",
                "hospitals' own val. BA"):
        table.add_column(col, justify="left" if col in ("pipeline", "algorithm", "change", "scored model") else "right")
    for name, algorithm, note, scores in rows:
        table.add_row(name, algorithm, note, scores[0]["model"], mean_sd([s["ba"] for s in scores]), mean_sd([s["auroc"] for s in scores]),
                      mean_sd([s["ba"] / reference if s["ba"] is not None else None for s in scores]),
                      mean_sd([s["local_ba"] for s in scores]))
    console.print(table)
    console.print(f"total {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
