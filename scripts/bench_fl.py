"""Benchmark (not a test): what Flower costs on top of plain PyTorch, and rounds per minute.

1. One client's local epoch inside Flower's simulation runtime against a plain PyTorch loop over
   the same tensors, model, optimiser and batch size, measured in this one run. The Flower figure
   is the server-side time from sending the training message to receiving the reply (so it holds
   message passing through Ray, model (de)serialisation and the client's assembly work), taken from
   rounds after the first (the first holds the worker's imports and image loading).
2. Rounds per minute for 4 clients at tiny scale (FedAvg, train + evaluate per round).

    OMP_NUM_THREADS=1 .venv/bin/python -m scripts.bench_fl [--images-per-class 1000] [--rounds 6]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from fl.simulation import quiet_environment


class PlainLoop:
    """The FedAvg client's local epoch as a plain PyTorch loop: same tensors, model, optimiser, batches."""

    def __init__(self, plan: dict, data_dir: str):
        import torch

        from fl.data import load_client_data
        from fl.models import build_model

        torch.set_num_threads(1)
        self.plan = plan
        self.data = load_client_data(
            data_dir, plan["classes"], plan["image_size"], plan["channels"], plan["val_fraction"], plan["seed"]
        )
        self.model = build_model("FedAvg", plan["channels"], len(plan["classes"]), plan["image_size"], plan["seed"])
        self.optimiser = torch.optim.SGD(self.model.parameters(), lr=plan["lr"], momentum=plan["momentum"])
        self.times: list[float] = []

    def epoch(self) -> float:
        from torch.nn import functional as F

        from fl.data import train_loader

        start = time.perf_counter()
        self.model.train()
        for x, y in train_loader(self.data, self.plan["batch_size"], len(self.times)):
            self.optimiser.zero_grad()
            F.cross_entropy(self.model(x), y).backward()
            self.optimiser.step()
        self.times.append(time.perf_counter() - start)
        return self.times[-1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--images-per-class", type=int, default=1000, help="one client's images per class (overhead test)"
    )
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument(
        "--tiny-per-class", type=int, default=40, help="images per class per client (rounds/minute test)"
    )
    args = parser.parse_args()
    quiet_environment()
    with tempfile.TemporaryDirectory(prefix="bench-fl-") as tmp:
        os.environ.setdefault("FLWR_HOME", str(Path(tmp) / "flwr_home"))
        bench(args, Path(tmp))
    return 0


def bench(args: argparse.Namespace, work: Path) -> None:
    from fl.runner import TrainConfig, resolve, run_training
    from fl.testing import make_federation

    (one,), source = make_federation(work / "one", n_clients=1, per_class=args.images_per_class)
    config = TrainConfig(clients=[{"data_dir": one}], algorithm="FedAvg", rounds=args.rounds, out_dir=work / "run_one")
    plan = resolve(config)
    print(
        f"data: {source}; one client with {2 * args.images_per_class} images, {plan['image_size']} px, batch {plan['batch_size']}"
    )

    # plain epochs run between Flower's rounds (in the progress callback, while Flower waits), so
    # both see the same load on this shared machine
    plain = PlainLoop(plan, str(one))
    plain.epoch()  # warm-up
    result = run_training(config, progress=lambda e: plain.epoch() if e.kind == "round" else None, workers=1)
    n_train = len(plain.data.train_y)
    flower = [r.train_time_s for r in result.rounds[1:]]
    plain_s, flower_s = statistics.median(plain.times[1:]), statistics.median(flower)
    print(
        f"plain PyTorch epoch : {plain_s:.3f} s  ({n_train / plain_s:,.0f} images/s)  median of {len(plain.times) - 1}"
    )
    print(f"Flower client epoch : {flower_s:.3f} s  ({n_train / flower_s:,.0f} images/s)  median of {len(flower)} rounds "
          f"[first round incl. worker start-up and image loading: {result.rounds[0].train_time_s:.1f} s]")  # fmt: skip
    print(f"overhead ratio      : {flower_s / plain_s:.2f}x  (target <= 1.5x)")
    clients = [next(iter(r.clients.values())) for r in result.rounds[1:]]
    local = statistics.median(c.local_train_s for c in clients)
    handled = statistics.median(c.client_s for c in clients)
    print(
        f"  of which: local training {local:.3f} s, client set-up/serialisation {handled - local:.3f} s, "
        f"Flower/Ray transport {flower_s - handled:.3f} s"
    )

    dirs, _ = make_federation(work / "four", n_clients=4, per_class=args.tiny_per_class)
    tiny = TrainConfig(
        clients=[{"data_dir": d} for d in dirs], algorithm="FedAvg", rounds=args.rounds, out_dir=work / "run_four"
    )
    start = time.perf_counter()
    result = run_training(tiny)
    total = time.perf_counter() - start
    steady = sum(r.wall_time_s for r in result.rounds[1:]) / (len(result.rounds) - 1)
    print(f"4 clients x {2 * args.tiny_per_class} images: {60 / steady:.1f} rounds/min after the first round "
          f"({steady:.2f} s/round); {args.rounds} rounds in {total:.0f} s including start-up "
          f"({60 * args.rounds / total:.1f} rounds/min); global AUROC {result.final.global_.auroc:.3f}")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
