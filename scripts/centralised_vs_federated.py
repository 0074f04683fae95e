"""Benchmark (not a test): the paper's table beside ours — centralised against federated training.

For each environment with a real pool, on its first task at ``real`` scale:

- **centralised**: the same network (``fl.models``, the clients' MONAI transform, the harmonised
  schema) trained on the whole pool's official training split in one place, relabelled to the
  task's target classes (pool classes that map onto no single target are left out) — run as one
  client of the same Flower training, so the optimiser, batches and epochs are the federation's;
- **federated**: the oracle's pipeline (the answer key's clean, harmonised files at the hospitals)
  trained with FedAvg for the same number of epochs (rounds x 1 local epoch);

both scored on the environment's held-out test set (``eval.outcome``; no training image is in it).
MedMNIST v2's published test AUC/ACC (ResNet-18 at 28 px, Yang et al., Sci Data 2023, Table 2) are
shown beside for reference only: the labels are the same as the first tasks' for PneumoniaMNIST,
BreastMNIST and RetinaMNIST (5 DR grades), but their network is a ResNet-18 trained for 100 epochs,
their test split is the whole official one (ours: a class-balanced draw from it, 300 per class at
most, topped up from the validation split), and their ACC is plain accuracy where ours is balanced.

    OMP_NUM_THREADS=1 .venv/bin/python -m scripts.centralised_vs_federated --seeds 0,1 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from environments.pools import REAL_POOL_FILES
from fedagentbench_cli import quiet_environment

#: MedMNIST v2, Table 2, ResNet-18 (28): test AUC, ACC on the dataset's own labels
PUBLISHED: dict[str, tuple[str, float, float]] = {
    "xray": ("PneumoniaMNIST (normal / pneumonia)", 0.944, 0.854),
    "ultrasound": ("BreastMNIST (malignant / normal or benign)", 0.901, 0.863),
    "fundus": ("RetinaMNIST (5 DR grades)", 0.717, 0.524),
}


def centralised_folder(env_dir: Path, task, data_dir: Path, dest: Path) -> int:
    """The pool's official training split (minus anything held out) as one site's class folders, in
    the task's harmonised schema; returns how many images it holds."""
    import numpy as np

    from environments.answer_key import load_task_key
    from environments.heldout import target_of_pool_class, task_test_set
    from environments.pools import REAL_POOL_FILES, _read_npz
    from graphs.upstream import _write_png, standardise

    schema = load_task_key(env_dir, task.task_id).target_schema
    images, labels, splits = _read_npz(data_dir / REAL_POOL_FILES[task.environment][0])
    held, _, _ = task_test_set(env_dir, task)
    held_bytes = {img.tobytes() for img in held}
    mapping = target_of_pool_class(task)
    shutil.rmtree(dest, ignore_errors=True)
    count = 0
    for i in np.flatnonzero(splits == "train"):
        target = mapping.get(int(labels[i]))
        if target is None or images[i].tobytes() in held_bytes:
            continue
        (dest / target).mkdir(parents=True, exist_ok=True)
        _write_png(dest / target / f"{i:06d}.png", standardise(images[i], schema.image_size, schema.mode))
        count += 1
    return count


def main() -> int:
    quiet_environment()
    from rich.console import Console
    from rich.table import Table

    from environments.builder import build_environment
    from environments.tasks import tasks_for
    from fl.service import close_shared
    from scripts.outcome_matters import build_variant, mean_sd, train_and_score

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--envs", default=",".join(REAL_POOL_FILES),
                        help="environments (comma-separated; default: those with a real pool)")
    parser.add_argument("--env-seed", type=int, default=7)
    parser.add_argument("--seeds", default="0,1", help="training seeds")
    parser.add_argument("--rounds", type=int, default=3, help="federated rounds = centralised epochs")
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/datasets"))
    parser.add_argument("--out", type=Path, default=Path("runs/centralised_vs_federated"))
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    console = Console(width=160)
    seeds = [int(s) for s in args.seeds.split(",")]
    rows: list[dict] = []
    t0 = time.perf_counter()
    try:
        for env in args.envs.split(","):
            task = tasks_for(env)[0]
            envs = args.out / "envs"
            if not (envs / env / "environment.json").is_file():
                build_environment(env, "real", args.env_seed, envs, data_dir=args.data_dir)
            env_dir = (envs / env).resolve()
            central = args.out / "data" / env / "centralised"
            n_central = centralised_folder(env_dir, task, args.data_dir, central / "all_sites")
            fed_dirs, _ = build_variant("oracle", env_dir, task.task_id, args.out / "data" / env / "federated")
            n_fed = sum(1 for d in fed_dirs.values() for p in d.rglob("*.png"))
            row = {"environment": env, "task": task.task_id, "centralised_images": n_central,
                   "federated_images": n_fed, "hospitals": len(fed_dirs), "centralised": [], "federated": []}
            for seed in seeds:
                row["centralised"].append(train_and_score(env_dir, task.task_id, {"all_sites": central / "all_sites"},
                                                          "FedAvg", args.rounds, seed,
                                                          args.out / "train" / env / f"central-s{seed}"))
                row["federated"].append(train_and_score(env_dir, task.task_id, fed_dirs, "FedAvg", args.rounds, seed,
                                                        args.out / "train" / env / f"fed-s{seed}"))
            rows.append(row)
            console.print(f"{env}: centralised {mean_sd([s['ba'] for s in row['centralised']])}, federated "
                          f"{mean_sd([s['ba'] for s in row['federated']])} ({time.perf_counter() - t0:.0f} s)")
    finally:
        close_shared()
    table = Table(title=f"centralised vs federated on the held-out test set (real scale, env seed {args.env_seed}, "
                        f"{args.rounds} epochs, seeds {seeds}; mean ± sd)")
    for col in ("environment / task", "centralised: images", "BA", "AUROC", "federated: hospitals, images", "BA",
                "AUROC", "MedMNIST v2 ResNet-18 (28): dataset", "AUC", "ACC"):
        table.add_column(col, justify="left" if "task" in col or "dataset" in col else "right")
    for row in rows:
        published = PUBLISHED.get(row["environment"], ("-", None, None))
        table.add_row(f"{row['environment']} / {row['task']}", str(row["centralised_images"]),
                      mean_sd([s["ba"] for s in row["centralised"]]), mean_sd([s["auroc"] for s in row["centralised"]]),
                      f"{row['hospitals']}, {row['federated_images']}",
                      mean_sd([s["ba"] for s in row["federated"]]), mean_sd([s["auroc"] for s in row["federated"]]),
                      published[0], f"{published[1]:.3f}" if published[1] else "-",
                      f"{published[2]:.3f}" if published[2] else "-")
    console.print(table)
    console.print(f"total {time.perf_counter() - t0:.0f} s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=1) + "\n", "utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
