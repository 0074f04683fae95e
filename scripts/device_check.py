"""Device check (not a test): one small federated training on the CPU and again on CUDA, same seed.

It trains the same federation (real images from ``$FEDAGENTBENCH_DATA`` when the pool is there,
else learnable synthetic ones; see ``fl.testing``) once with ``device="cpu"`` and once with
``device="cuda"`` in one Flower simulation, then prints both runs' final pooled metrics (accuracy,
balanced accuracy, loss), their differences against ``--tolerance``, the training times and the
speed-up, and writes the figures to ``--out`` (JSON). On CUDA, mixed precision follows the default
(on: bfloat16 where the GPU has it, else float16) unless ``--no-mixed-precision``; differences then
include that rounding. The CPU runs one torch thread per client, as the simulation always does.

Without a GPU it trains the CPU half, says that the GPU half was skipped, and exits 0;
``--require-gpu`` makes that an error (exit 1). Exit 1 also when a run fails or a difference
exceeds the tolerance.

    python -m scripts.device_check                                   # small: SplitNet at 28 px
    python -m scripts.device_check --network densenet121 --image-size 224 --out runs/device_check.json
    python -m scripts.device_check --algorithm all --rounds 1        # every algorithm runs on CUDA
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

METRICS = ("accuracy", "balanced_accuracy", "loss")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--algorithm", default="FedAvg",
                        help="registry name, a comma-separated list, or 'all' (every executable algorithm)")  # fmt: skip
    parser.add_argument("--network", choices=("default", "densenet121"), default="default")
    parser.add_argument("--image-size", type=int, default=None,
                        help="training input size (default: the images' own, 28 px for the default pool)")  # fmt: skip
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--per-class", type=int, default=100, help="images per class per client")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--local-epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tolerance", type=float, default=0.05,
                        help="largest absolute CPU-CUDA difference of each final metric")  # fmt: skip
    parser.add_argument("--mixed-precision", action=argparse.BooleanOptionalAction, default=None,
                        help="autocast on CUDA (default: on there)")  # fmt: skip
    parser.add_argument("--require-gpu", action="store_true", help="no CUDA device is an error (exit 1)")
    parser.add_argument("--workers", type=int, default=None, help="client processes (default: one per client)")
    parser.add_argument("--out", type=Path, default=Path("runs/device_check.json"), help="JSON with the figures")
    return parser.parse_args(argv)


def gpu_info() -> dict[str, Any]:
    """What torch sees: version, CUDA build, the GPU (None without one)."""
    import torch

    info: dict[str, Any] = {"torch": torch.__version__, "cuda_build": torch.version.cuda,
                            "cuda_available": torch.cuda.is_available(), "gpu": None, "bf16": None}  # fmt: skip
    if info["cuda_available"]:
        info["gpu"] = torch.cuda.get_device_name(0)
        info["bf16"] = torch.cuda.is_bf16_supported()
    return info


def algorithms(choice: str) -> list[str]:
    from fl.registry import get_algorithm, query

    if choice.strip().lower() == "all":
        return [a.name for a in query(executable=True)]
    return [get_algorithm(name.strip()).name for name in choice.split(",") if name.strip()]


def summary(result: Any) -> dict[str, Any]:
    """The figures of one run: final pooled metrics, times, where it ran."""
    final = result.final.global_ if result.final is not None else None
    rounds = [r.wall_time_s for r in result.rounds]
    return {
        "status": result.status, "error": result.error, "device": result.device,
        "client_devices": result.client_devices, "client_precision": result.client_precision,
        **{m: (getattr(final, m) if final is not None else None) for m in METRICS},
        "wall_time_s": result.wall_time_s, "round_times_s": rounds,
        "steady_round_s": sum(rounds[1:]) / len(rounds[1:]) if len(rounds) > 1 else None,
    }  # fmt: skip


def compare(cpu: dict[str, Any], cuda: dict[str, Any] | None, tolerance: float) -> dict[str, Any]:
    """Per metric |CPU - CUDA| and whether it is within the tolerance; the speed-up of the rounds
    after the first (the first holds image loading and CUDA start-up), else of all rounds."""
    if cuda is None:
        return {"differences": None, "within_tolerance": None, "speedup": None}
    diffs = {m: (abs(cpu[m] - cuda[m]) if cpu[m] is not None and cuda[m] is not None else None) for m in METRICS}
    within = all(d is not None and d <= tolerance for d in diffs.values())
    key = "steady_round_s" if cpu["steady_round_s"] and cuda["steady_round_s"] else "wall_time_s"
    speedup = cpu[key] / cuda[key] if cuda[key] else None
    return {"differences": diffs, "within_tolerance": within, "speedup": speedup, "speedup_of": key}


def run(args: argparse.Namespace, work: Path, with_gpu: bool) -> dict[str, Any]:
    """Both halves of every algorithm in one Flower simulation; returns the report dictionary."""
    from fl.runner import TrainConfig, run_many
    from fl.testing import make_federation

    dirs, source = make_federation(work / "data", n_clients=args.clients, per_class=args.per_class, seed=args.seed)
    clients = [{"name": f"hospital_{i}", "data_dir": d} for i, d in enumerate(dirs)]
    common = dict(clients=clients, rounds=args.rounds, local_epochs=args.local_epochs, batch_size=args.batch_size,
                  lr=args.lr, seed=args.seed, image_size=args.image_size, network=args.network)  # fmt: skip
    names = algorithms(args.algorithm)
    configs, halves = [], []
    for name in names:
        configs.append(TrainConfig(algorithm=name, device="cpu", out_dir=work / "cpu" / name, **common))
        halves.append((name, "cpu"))
        if with_gpu:
            configs.append(TrainConfig(algorithm=name, device="cuda", mixed_precision=args.mixed_precision,
                                       out_dir=work / "cuda" / name, **common))  # fmt: skip
            halves.append((name, "cuda"))
    start = time.perf_counter()
    results = run_many(configs, workers=args.workers)
    runs: dict[str, dict[str, Any]] = {name: {"cpu": None, "cuda": None} for name in names}
    for (name, half), result in zip(halves, results):
        runs[name][half] = summary(result)
    for name in names:
        runs[name] |= compare(runs[name]["cpu"], runs[name]["cuda"], args.tolerance)
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "require_gpu")}
    return {"settings": settings, "data_source": source, "image_size": results[0].config["image_size"],
            "runs": runs, "total_s": time.perf_counter() - start}  # fmt: skip


def _fmt(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def show(report: dict[str, Any]) -> None:
    """The metrics table (CPU, CUDA, difference, tolerance) and the timing table."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    tol = report["settings"]["tolerance"]
    size = f"{report['image_size']} px"
    table = Table(title=f"device check: {report['settings']['network']} network at {size}, seed "
                        f"{report['settings']['seed']} (data: {report['data_source']})")  # fmt: skip
    for col in ("algorithm", "metric", "CPU", "CUDA", "|diff|", "tolerance", "ok"):
        table.add_column(col, justify="left" if col in ("algorithm", "metric") else "right")
    for name, run in report["runs"].items():
        cpu, cuda, diffs = run["cpu"], run["cuda"], run["differences"] or {}
        for metric in METRICS:
            ok = "-" if cuda is None else ("yes" if (diffs.get(metric) is not None and diffs[metric] <= tol)
                                            else "[red]NO[/red]")  # fmt: skip
            table.add_row(name, metric, _fmt(cpu[metric]), "skipped" if cuda is None else _fmt(cuda[metric]),
                          _fmt(diffs.get(metric)), _fmt(tol, 3), ok)  # fmt: skip
    console.print(table)
    times = Table(title="training time (server side: sending round 1 to the last reply)")
    for col in ("algorithm", "CPU s", "CUDA s", "CPU s/round*", "CUDA s/round*", "speed-up", "CUDA precision"):
        times.add_column(col, justify="left" if col in ("algorithm", "CUDA precision") else "right")
    for name, run in report["runs"].items():
        cpu, cuda = run["cpu"], run["cuda"]
        precision = ",".join(sorted(set(cuda["client_precision"].values()))) if cuda else "skipped"
        times.add_row(name, _fmt(cpu["wall_time_s"], 2), _fmt(cuda and cuda["wall_time_s"], 2),
                      _fmt(cpu["steady_round_s"], 2), _fmt(cuda and cuda["steady_round_s"], 2),
                      "-" if run["speedup"] is None else f"{run['speedup']:.1f}x", precision)  # fmt: skip
    console.print(times)
    console.print("* mean of the rounds after the first (the first holds image loading and CUDA start-up)")
    for name, run in report["runs"].items():
        for half in ("cpu", "cuda"):
            if run[half] is not None and run[half]["status"] != "completed":
                console.print(f"[red]{name} on {half} {run[half]['status']}:[/red] {run[half]['error']}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from fl.simulation import quiet_environment

    quiet_environment()
    info = gpu_info()
    if not info["cuda_available"] and args.require_gpu:
        print(f"error: --require-gpu, but torch.cuda.is_available() is False (torch {info['torch']}, "
              f"CUDA build: {info['cuda_build'] or 'none'})", file=sys.stderr)  # fmt: skip
        return 1
    with tempfile.TemporaryDirectory(prefix="device-check-") as tmp:
        os.environ.setdefault("FLWR_HOME", str(Path(tmp) / "flwr_home"))
        report = {"environment": info, **run(args, Path(tmp), with_gpu=info["cuda_available"])}
    report["gpu_skipped"] = (
        None
        if info["cuda_available"]
        else (f"no CUDA device (torch {info['torch']}, CUDA build: {info['cuda_build'] or 'none'})")
    )
    show(report)
    if report["gpu_skipped"]:
        print(f"GPU half skipped: {report['gpu_skipped']}; only the CPU half ran")
    else:
        print(f"GPU: {info['gpu']} (bfloat16: {info['bf16']})")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1), "utf-8")
    print(f"figures: {args.out}")
    runs = report["runs"].values()
    failed = any(r[h] is not None and r[h]["status"] != "completed" for r in runs for h in ("cpu", "cuda"))
    outside = any(r["within_tolerance"] is False for r in runs)
    return 1 if failed or outside else 0


if __name__ == "__main__":
    sys.exit(main())
