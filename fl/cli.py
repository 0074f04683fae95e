"""``fedagentbench algorithms``, ``fedagentbench train`` and ``fedagentbench deploy certs``.

Only the standard library is imported at module level (``fedagentbench --help`` stays fast);
pydantic, rich, torch, MONAI and Flower are imported when a command runs.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from fedagentbench_cli import DefaultsHelpFormatter

CATEGORIES = ("traditional", "personalised", "domain_generalisation")


def register(subparsers: argparse._SubParsersAction) -> None:
    alg = subparsers.add_parser("algorithms", help="list the 40 federated-learning algorithms (registry)")
    alg.add_argument("--category", choices=CATEGORIES, help="only this category")
    alg.add_argument("--cue", help="only algorithms with this selection cue (e.g. label_skew, feature_shift)")
    alg.add_argument("--executable", action="store_true", help="only algorithms that can be trained here")
    alg.add_argument("--json", action="store_true", help="print JSON instead of a table")
    alg.set_defaults(func=cmd_algorithms)

    tr = subparsers.add_parser("train", help="federated training on harmonised client folders (Flower + MONAI)",
                               formatter_class=DefaultsHelpFormatter)
    tr.add_argument("--client", action="append", required=True, metavar="DIR",
                    help="a hospital's harmonised dataset <DIR>/<class>/*.png (repeat per client); NAME=DIR names it")  # fmt: skip
    tr.add_argument("--algorithm", required=True, help="registry name, e.g. FedAvg, FedProx, FedBN, FedAdam")
    tr.add_argument("--rounds", type=int, required=True)
    tr.add_argument("--local-epochs", type=int, default=1)
    tr.add_argument("--batch-size", type=int, default=32)
    tr.add_argument("--lr", type=float, default=0.01)
    tr.add_argument("--image-size", type=int, default=None,
                    help="training input size in px (e.g. 224 with densenet121); default: the images' size, "
                         "within 28-64")  # fmt: skip
    tr.add_argument("--network", choices=("default", "densenet121"), default="default",
                    help="default: the small MONAI SplitNet; densenet121: MONAI's DenseNet-121 (GPU-sized)")  # fmt: skip
    tr.add_argument("--device", default="auto", metavar="auto|cpu|cuda|cuda:N",
                    help="where the clients train; auto: CUDA when torch sees a GPU, else the CPU")  # fmt: skip
    tr.add_argument("--mixed-precision", action=argparse.BooleanOptionalAction, default=None,
                    help="autocast (bfloat16, else float16) in local training; default: on for CUDA, off on the CPU")  # fmt: skip
    tr.add_argument("--max-images", type=int, default=None, help="at most this many images per client")
    tr.add_argument("--hp", action="append", default=[], metavar="KEY=VALUE", help="hyperparameter override")
    tr.add_argument("--out", default=None, help="result folder (default runs/fl/<algorithm>-<time>)")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--runtime", choices=("simulation", "deployment"), default="simulation",
                    help="simulation (Ray, one process) or local deployment (SuperLink + one SuperNode per client)")  # fmt: skip
    tr.add_argument("--workers", type=int, default=None, help="parallel client processes in simulation")
    tr.add_argument("--ray-address", default=None, metavar="HOST:PORT",
                    help="simulation: attach to this running Ray cluster instead of starting one "
                         "(default: $FEDAGENTBENCH_RAY_ADDRESS; unset: a local Ray)")  # fmt: skip
    tr.add_argument("--json", action="store_true", help="print the result JSON instead of tables")
    tr.set_defaults(func=cmd_train)

    dep = subparsers.add_parser("deploy", help="secured Flower deployment: certificates and SuperNode keys")
    dep_sub = dep.add_subparsers(dest="deploy_command", metavar="SUBCOMMAND", required=True)
    certs = dep_sub.add_parser(
        "certs", help="write a CA, the SuperLink's TLS certificate and one key pair per SuperNode",
        formatter_class=DefaultsHelpFormatter,
    )  # fmt: skip
    certs.add_argument("--out", required=True, metavar="DIR", help="new folder for the keys and certificates")
    certs.add_argument("--supernodes", required=True, metavar="A,B,...",
                       help="comma-separated SuperNode (hospital) names")  # fmt: skip
    certs.add_argument("--host", default="127.0.0.1",
                       help="the SuperLink's IP address or DNS name, as SuperNodes dial it")  # fmt: skip
    certs.add_argument("--force", action="store_true", help="replace an existing --out folder")
    certs.set_defaults(func=cmd_deploy_certs)


def cmd_algorithms(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from fl.registry import query

    algos = query(category=args.category, cue=args.cue, executable=True if args.executable else None)
    if args.json:
        print(json.dumps([a.model_dump(mode="json") for a in algos], indent=1))
        return 0
    table = Table(title=f"{len(algos)} federated-learning algorithms", show_lines=False)
    for col in ("Name", "Category", "Run", "Cues", "Key idea"):
        table.add_column(col, overflow="fold")
    for a in algos:
        name = a.name + (f" ({', '.join(a.variants)})" if a.variants else "")
        table.add_row(
            name, a.category.value, "yes" if a.executable else "-", ", ".join(c.value for c in a.cues), a.key_idea
        )
    Console().print(table)
    return 0


def _parse_hp(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--hp expects KEY=VALUE, got {item!r}")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def _clients(items: list[str]) -> list[dict[str, str]]:
    """``NAME=DIR`` or ``DIR`` per client. Unnamed folders are named after the folder; folders that
    share a name (e.g. ``a/harmonised`` and ``b/harmonised``) get their parent's name in front,
    then a number, so that every client has its own name."""
    clients = []
    for item in items:
        name, sep, path = item.partition("=")
        clients.append({"name": name, "data_dir": path} if sep and "/" not in name else {"data_dir": item})
    taken = {c["name"] for c in clients if "name" in c}
    unnamed = [c for c in clients if "name" not in c]
    base = [Path(c["data_dir"]).resolve().name or str(c["data_dir"]) for c in unnamed]
    for client, folder in zip(unnamed, base):
        name = folder
        if base.count(folder) > 1 or name in taken:
            parent = Path(client["data_dir"]).resolve().parent.name
            name = f"{parent}-{folder}" if parent else folder
        number = 2
        candidate = name
        while candidate in taken:
            candidate, number = f"{name}-{number}", number + 1
        client["name"] = candidate
        taken.add(candidate)
    return clients


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _result_table(result: Any):
    from rich.table import Table

    variant = result.config.get("hp", {}).get("variant")
    name = f"{result.algorithm} ({variant})" if variant else result.algorithm
    where = f" on {result.device}" if result.device else ""
    table = Table(title=f"{name}: {result.status} in {result.wall_time_s:.1f} s{where}")
    for col in ("Client", "n val", "loss", "accuracy", "bal. acc.", "AUROC"):
        table.add_column(col, justify="right" if col != "Client" else "left")
    if result.final is not None:
        rows = list(result.final.clients.items()) + [("global (pooled)", result.final.global_)]
        for name, m in rows:
            table.add_row(
                name, str(m.num_examples), _fmt(m.loss), _fmt(m.accuracy), _fmt(m.balanced_accuracy), _fmt(m.auroc)
            )
    return table


def cmd_train(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from fl.runner import ProgressEvent, TrainConfig, resolve, run_training

    config = TrainConfig(
        clients=_clients(args.client), algorithm=args.algorithm, rounds=args.rounds, local_epochs=args.local_epochs,
        batch_size=args.batch_size, lr=args.lr, image_size=args.image_size, max_images_per_client=args.max_images,
        hyperparameters=_parse_hp(args.hp), out_dir=args.out, seed=args.seed, device=args.device,
        network=args.network, mixed_precision=args.mixed_precision,
    )  # fmt: skip
    resolve(config)  # bad folders, classes or algorithm: a clear error before Flower starts
    if args.ray_address and args.runtime != "simulation":
        raise ValueError("--ray-address applies to the simulation runtime only")
    if args.ray_address:  # read by fl.simulation.backend_config, under every simulation path
        from fl.simulation import RAY_ADDRESS_ENV

        os.environ[RAY_ADDRESS_ENV] = args.ray_address
    console = Console(stderr=args.json)
    if args.runtime == "deployment":
        from fl.deploy import run_deployed

        with console.status(f"{config.algorithm}: SuperLink + {len(config.clients)} SuperNodes on 127.0.0.1 ..."):
            result = run_deployed([config])[0]
    else:
        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[info]}"),
        )
        with Progress(*columns, console=console) as bar:
            task = bar.add_task(f"{config.algorithm} (starting Flower)", total=config.rounds, info="")

            def on_progress(event: ProgressEvent) -> None:
                if event.kind == "start":
                    bar.update(task, description=f"{config.algorithm} rounds")
                elif event.kind == "round" and event.record is not None:
                    g = event.record.global_
                    bar.update(
                        task,
                        completed=event.round,
                        info=f"acc {_fmt(g.accuracy)}  AUROC {_fmt(g.auroc)}  loss {_fmt(g.loss)}",
                    )

            result = run_training(config, progress=on_progress, workers=args.workers)
    if args.json:
        print(result.model_dump_json(indent=1, by_alias=True))
    else:
        console.print(_result_table(result))
        console.print(f"result: {result.result_path}")
        if result.error:
            console.print(f"[red]error:[/red] {result.error}")
    return 0 if result.status == "completed" else 1


def cmd_deploy_certs(args: argparse.Namespace) -> int:
    from rich.table import Table

    from fedagentbench_cli import console
    from fl.certs import generate_federation_certs

    names = [n.strip() for n in args.supernodes.split(",") if n.strip()]
    certs = generate_federation_certs(args.out, names, host=args.host, force=args.force)  # ValueError: exit 2
    table = Table(title=f"federation keys in {certs.out_dir} (SuperLink host {certs.host})")
    for col in ("File", "Kind", "Goes to"):
        table.add_column(col, overflow="fold")
    table.add_row(str(certs.ca_cert), "CA certificate", "SuperLink, every SuperNode, the flwr CLI (root-certificates)")
    table.add_row(str(certs.ca_key), "CA private key (0600)", "nobody: keep offline")
    table.add_row(str(certs.server_cert), "SuperLink certificate", "SuperLink (--ssl-certfile)")
    table.add_row(str(certs.server_key), "SuperLink private key (0600)", "SuperLink (--ssl-keyfile)")
    for keys in certs.supernodes:
        table.add_row(
            str(keys.private_key), "SuperNode private key (0600)", f"{keys.name} only (--auth-supernode-private-key)"
        )
        table.add_row(str(keys.public_key), "SuperNode public key", "operator: flwr supernode register")
    console().print(table)
    return 0
