"""Benchmark (not a test): every executable registry algorithm on the real X-ray pool, split over
hospitals with label skew and with feature shift.

- ``label_skew``: each hospital draws its class proportions from Dirichlet(``--alpha``) (at least
  ``MIN_PER_CLASS`` images of every class, so every hospital has every class folder).
- ``feature_shift``: every hospital has the pool's class balance but sees the images through its
  own acquisition: as they are; gamma 0.5 and a blur; inverted; gamma 1.8 and sensor noise. The
  shifts survive the per-image min-max scaling of the training pipeline.

Every algorithm trains on the same hospitals (one Flower simulation per setting and seed). Each
hospital is then scored with the model it would deploy — its own model for a personalised
algorithm, the global model otherwise — on the pool's held-out test split seen through its own
acquisition: ``BA`` is the balanced accuracy, ``local acc.`` the accuracy expected under the
hospital's own class proportions (sum over classes of its share times the class recall). Both
are averaged over hospitals; the table gives mean ± sd over seeds, and each algorithm's BA minus
FedAvg's on the same seed (same hospitals), mean ± sd of those paired differences.

Results are appended to ``<out>/results.jsonl`` as each training ends, and a rerun skips what is
there (``--fresh`` starts over).

    OMP_NUM_THREADS=1 .venv/bin/python -m scripts.compare_algorithms --seeds 0,1,2 --rounds 4 --local-epochs 3 \\
        --markdown docs/algorithm-comparison.md
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from fl.simulation import quiet_environment

POOL = "xray_pneumoniamnist_28.npz"
CLASSES = ("normal", "pneumonia")
SETTINGS = ("label_skew", "feature_shift")
MIN_PER_CLASS = 6
#: feature_shift: each hospital's acquisition (applied to uint8 images)
ACQUISITIONS = ("as is", "gamma 0.5 + blur", "inverted", "gamma 1.8 + noise")


def acquire(images: np.ndarray, hospital: int, seed: int) -> np.ndarray:
    """The images as hospital ``hospital`` of the feature-shift setting records them."""
    x = images.astype(np.float32) / 255.0
    kind = ACQUISITIONS[hospital % len(ACQUISITIONS)]
    if kind == "gamma 0.5 + blur":
        x = x**0.5
        padded = np.pad(x, ((0, 0), (1, 1), (1, 1)), mode="edge")
        x = sum(padded[:, i : i + x.shape[1], j : j + x.shape[2]] for i in range(3) for j in range(3)) / 9.0
    elif kind == "inverted":
        x = 1.0 - x
    elif kind == "gamma 1.8 + noise":
        x = x**1.8 + np.random.default_rng(seed + 7919 * hospital).normal(0, 0.08, x.shape)
    return (np.clip(x, 0, 1) * 255).round().astype(np.uint8)


def split_hospitals(labels: np.ndarray, setting: str, hospitals: int, per_hospital: int, alpha: float,
                    seed: int) -> list[np.ndarray]:  # fmt: skip
    """Disjoint index sets of the training pool, one per hospital."""
    rng = np.random.default_rng(seed)
    pools = {c: list(rng.permutation(np.flatnonzero(labels == c))) for c in range(len(CLASSES))}
    share = np.bincount(labels, minlength=len(CLASSES)) / len(labels)
    out = []
    for _ in range(hospitals):
        p = rng.dirichlet([alpha] * len(CLASSES)) if setting == "label_skew" else share
        counts = np.maximum(MIN_PER_CLASS, np.round(p * per_hospital).astype(int))
        counts[np.argmax(counts)] -= max(0, counts.sum() - per_hospital)
        take = []
        for c, n in enumerate(counts):
            if len(pools[c]) < n:
                raise ValueError(f"the pool has too few images of class {CLASSES[c]}")
            take += [pools[c].pop() for _ in range(n)]
        out.append(np.array(take))
    return out


def write_folder(folder: Path, images: np.ndarray, labels: np.ndarray) -> None:
    from PIL import Image

    for name in CLASSES:
        (folder / name).mkdir(parents=True, exist_ok=True)
    for i, (img, y) in enumerate(zip(images, labels)):
        Image.fromarray(img).save(folder / CLASSES[int(y)] / f"{i:05d}.png")


def build_federation(root: Path, setting: str, seed: int, args) -> list[dict]:
    """Hospitals' training folders and their views of the held-out test split."""
    with np.load(Path(args.data_dir) / POOL) as d:
        train_x, train_y = d["train_images"], d["train_labels"].reshape(-1).astype(int)
        test_x, test_y = d["test_images"], d["test_labels"].reshape(-1).astype(int)
    parts = split_hospitals(train_y, setting, args.hospitals, args.per_hospital, args.alpha, seed)
    hospitals = []
    for h, idx in enumerate(parts):
        name = f"hospital_{h}"
        view = (lambda x, h=h: acquire(x, h, seed)) if setting == "feature_shift" else (lambda x: x)
        write_folder(root / "train" / name, view(train_x[idx]), train_y[idx])
        write_folder(root / "test" / name, view(test_x), test_y)
        share = np.bincount(train_y[idx], minlength=len(CLASSES)) / len(idx)
        hospitals.append({"name": name, "data_dir": root / "train" / name, "test_dir": root / "test" / name,
                          "share": share.tolist()})  # fmt: skip
    return hospitals


def _test_tensors(test_dir: Path, image_size: int, channels: int):
    import torch

    from fl.data import load_client_data

    data = load_client_data(test_dir, list(CLASSES), image_size, channels, val_fraction=0.5, seed=0)
    return torch.cat([data.train_x, data.val_x]), torch.cat([data.train_y, data.val_y]).numpy()


def score(result, hospitals: list[dict]) -> dict:
    """Each hospital's deployed model on its view of the held-out split: mean BA and local accuracy."""
    import torch

    from fl import CLIENT_MODELS_DIR
    from fl.models import build_model
    from fl.registry import get_algorithm

    out_dir = Path(result.result_path).parent
    personalised = get_algorithm(result.algorithm).category.value == "personalised"
    config = result.config
    bas, local = {}, {}
    for h in hospitals:
        weights = out_dir / CLIENT_MODELS_DIR / f"{h['name']}.pt" if personalised else out_dir / "global_model.pt"
        if not weights.exists():
            raise FileNotFoundError(f"no deployed model for {h['name']}: {weights}")
        model = build_model(result.algorithm, config["channels"], len(result.classes), config["image_size"], 0,
                            network=config.get("network", "default"))
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True), strict=False)
        model.eval()
        x, y = _test_tensors(h["test_dir"], config["image_size"], config["channels"])
        with torch.no_grad():
            predicted = torch.cat([model(x[i : i + 256]) for i in range(0, len(x), 256)]).argmax(1).numpy()
        recalls = np.array([np.mean(predicted[y == c] == c) for c in range(len(CLASSES))])
        bas[h["name"]] = float(recalls.mean())
        local[h["name"]] = float(np.dot(h["share"], recalls))
    return {"ba": float(np.mean(list(bas.values()))), "local_acc": float(np.mean(list(local.values()))),
            "per_hospital_ba": bas}  # fmt: skip


def run_setting(setting: str, seed: int, algorithms: list[str], args, done: set, log: Path) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from fl.runner import TrainConfig, run_many

    todo = [a for a in algorithms if (setting, seed, a) not in done]
    if not todo:
        return
    root = Path(args.out) / f"{setting}-seed{seed}"
    shutil.rmtree(root, ignore_errors=True)
    hospitals = build_federation(root / "data", setting, seed, args)
    clients = [{"name": h["name"], "data_dir": h["data_dir"]} for h in hospitals]
    configs = [TrainConfig(clients=clients, algorithm=a, rounds=args.rounds, local_epochs=args.local_epochs,
                           batch_size=args.batch_size, seed=seed, out_dir=root / "runs" / a) for a in todo]  # fmt: skip
    with Progress(TextColumn(f"{setting} seed {seed}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.description}"), TimeElapsedColumn()) as bar:  # fmt: skip
        task = bar.add_task("starting", total=len(todo) * args.rounds)

        def progress(event) -> None:
            if event.kind in ("round", "failed"):
                bar.update(task, advance=1 if event.kind == "round" else args.rounds, description=event.algorithm)

        results = run_many(configs, progress=progress, workers=args.workers)
    with log.open("a") as f:
        for result in results:
            row = {"setting": setting, "seed": seed, "algorithm": result.algorithm, "rounds": args.rounds,
                   "local_epochs": args.local_epochs, "per_hospital": args.per_hospital,
                   "status": result.status, "error": result.error, "wall_time_s": round(result.wall_time_s, 1)}  # fmt: skip
            if result.status == "completed":
                row.update(score(result, hospitals))
            f.write(json.dumps(row) + "\n")


def _cell(values: list[float], signed: bool = False) -> str:
    if not values:
        return "–"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):{'+' if signed else ''}.3f} ± {sd:.3f}"


def table(rows: list[dict], algorithms: list[str], command: str, setup: str) -> str:
    """Markdown: one row per algorithm, BA and local accuracy per setting (mean ± sd over seeds)."""
    from fl.registry import get_algorithm

    seeds = sorted({r["seed"] for r in rows})
    floor = {
        setting: _cell([r["ba"] for r in rows if r["algorithm"] == "FedAvg" and r["setting"] == setting
                        and r["status"] == "completed"])  # fmt: skip
        for setting in SETTINGS
    }
    lines = ["# The 40 FL algorithms on the real X-ray pool", "",
             f"Command: `{command}`", "", setup, "",
             "How to read it: a short run on small hospitals ranks mechanisms, not tuned papers. Each seed "
             "draws its own hospitals (split, acquisition noise) and initialisation, so the spread of a "
             f"column mixes federation and training noise: FedAvg's is BA {floor['label_skew']} under label "
             f"skew and {floor['feature_shift']} under feature shift. Every algorithm of a seed trains on "
             "the same hospitals, so Δ BA vs FedAvg is paired per seed (mean ± sd of the differences); a "
             "difference is only one where it stands clear of its own sd. Under label skew a personalised model can score a high local accuracy "
             "with a balanced accuracy near 0.5 by predicting its hospital's majority class; the two "
             "columns together tell that apart from learning. Under feature shift every hospital has the "
             "pool's class balance, so BA and local accuracy move together. docs/federated-training.md "
             "says how each algorithm works here and where it simplifies its paper.", "",
             f"Seeds: {', '.join(map(str, seeds))}. Mean ± sd over seeds of the hospitals' mean; – : not run or failed (listed below).", "",
             "| algorithm | category | label skew BA | Δ BA vs FedAvg | label skew local acc. "
             "| feature shift BA | Δ BA vs FedAvg | feature shift local acc. |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    completed = {(r["algorithm"], r["setting"], r["seed"]): r for r in rows if r["status"] == "completed"}
    for name in algorithms:
        cells = []
        for setting in SETTINGS:
            done = [r for (a, s, _), r in completed.items() if a == name and s == setting]
            paired = [r["ba"] - completed[("FedAvg", setting, r["seed"])]["ba"] for r in done
                      if ("FedAvg", setting, r["seed"]) in completed]  # fmt: skip
            cells += [_cell([r["ba"] for r in done]), _cell(paired, signed=True), _cell([r["local_acc"] for r in done])]
        lines.append(f"| {name} | {get_algorithm(name).category.value} | " + " | ".join(cells) + " |")
    failed = [r for r in rows if r["status"] != "completed"]
    for r in failed:
        lines.append(f"\nFailed: {r['algorithm']} ({r['setting']}, seed {r['seed']}): {r['error']}")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--settings", default=",".join(SETTINGS))
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--hospitals", type=int, default=4)
    parser.add_argument("--per-hospital", type=int, default=200, help="training images per hospital")
    parser.add_argument("--alpha", type=float, default=0.5, help="Dirichlet concentration of the label skew")
    parser.add_argument("--local-epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--algorithms", default="all", help="comma-separated registry names, or all executable")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "datasets"))
    parser.add_argument("--out", default="runs/compare_algorithms")
    parser.add_argument("--markdown", default=None, help="also write the table to this file")
    parser.add_argument("--fresh", action="store_true", help="forget earlier results in --out")
    args = parser.parse_args()
    quiet_environment()
    from fl.registry import query

    names = [a.name for a in query(executable=True)]
    algorithms = names if args.algorithms == "all" else [a.strip() for a in args.algorithms.split(",")]
    unknown = sorted(set(algorithms) - set(names))
    if unknown:
        print(f"error: not executable registry algorithms: {', '.join(unknown)}", file=sys.stderr)
        return 2
    if not (Path(args.data_dir) / POOL).exists():
        print(f"error: {Path(args.data_dir) / POOL} not found (--data-dir)", file=sys.stderr)
        return 2
    out = Path(args.out)
    if args.fresh:
        shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    log = out / "results.jsonl"
    rows = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    same = ("rounds", "local_epochs", "per_hospital")
    rows = [r for r in rows if all(r.get(k) == getattr(args, k) for k in same)]
    done = {(r["setting"], r["seed"], r["algorithm"]) for r in rows}
    seeds = [int(s) for s in args.seeds.split(",")]
    start = time.perf_counter()
    for setting in args.settings.split(","):
        for seed in seeds:
            run_setting(setting, seed, algorithms, args, done, log)
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    rows = [r for r in rows if all(r.get(k) == getattr(args, k) for k in same) and r["seed"] in seeds
            and r["algorithm"] in algorithms]
    command = "OMP_NUM_THREADS=1 .venv/bin/python -m scripts.compare_algorithms " + " ".join(sys.argv[1:])
    setup = (f"{args.hospitals} hospitals x {args.per_hospital} training images of {POOL}, {args.rounds} rounds of "
             f"{args.local_epochs} local epoch(s), batch {args.batch_size}. Label skew: Dirichlet({args.alpha}) class "
             f"shares. Feature shift: acquisitions {', '.join(ACQUISITIONS)}. Scored on the pool's held-out test "
             "split through each hospital's acquisition, with the model the hospital deploys.")
    text = table(rows, algorithms, command, setup)
    print(text)
    print(f"{time.perf_counter() - start:.0f} s")
    if args.markdown:
        Path(args.markdown).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
