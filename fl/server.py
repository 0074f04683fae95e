"""The ServerApp: runs one or more training plans over the connected clients.

The round loop is Strategy.start's, written out so that each round also records every client's
validation metrics, pools them into global ones, writes the result JSON and reports progress.
Several plans (e.g. one per algorithm) can share one Flower run, which keeps Ray and the clients'
imports warm; client state is namespaced by each plan's ``run_tag``.
"""

from __future__ import annotations

import json
import math
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flwr.app import ConfigRecord, Context, Message
from flwr.serverapp import Grid, ServerApp

from fl import CLIENT_MODELS_DIR

ProgressFn = Callable[[dict[str, Any]], None]
#: held while a plan seeds torch's global generator and draws its starting weights from it, so that a
#: dry run (fl.preflight, which reseeds it) in another thread of the same process cannot change them
SEEDED = threading.RLock()


def client_spec(plan: dict[str, Any]) -> str:
    """The part of a plan every client needs, as JSON (see fl.algorithms.base.RunSpec)."""
    keys = ("run_tag", "algorithm", "classes", "channels", "image_size", "local_epochs", "batch_size", "lr",
            "momentum", "seed", "val_fraction", "max_images", "hp")  # fmt: skip
    optional = ("device", "mixed_precision", "network")  # plans written before these existed lack them
    return json.dumps({k: plan[k] for k in keys} | {k: plan[k] for k in optional if k in plan})


def _finite(value: Any) -> Any:
    """JSON has no NaN: store None instead."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _replies(replies: list[Message], phase: str) -> list[Message]:
    errors = [m for m in replies if m.has_error()]
    if errors:
        reasons = "; ".join(m.error.reason.strip().splitlines()[-1] if m.error.reason else "?" for m in errors)
        raise RuntimeError(f"{len(errors)} client(s) failed during {phase}: {reasons}")
    return replies


def _client_name(msg: Message) -> str:
    info = msg.content.config_records.get("client")
    return str(info["name"]) if info is not None else str(msg.metadata.src_node_id)


def _record_devices(result: dict[str, Any], replies: list[Message]) -> None:
    """Where each client trained and in which precision, as the clients report it; ``device`` is
    their common device (the devices joined by commas where they differ)."""
    for msg in replies:
        info = msg.content.config_records.get("client")
        if info is not None and "device" in info:
            result["client_devices"][_client_name(msg)] = str(info["device"])
            result["client_precision"][_client_name(msg)] = str(info.get("precision", "float32"))
    if result["client_devices"]:
        result["device"] = ",".join(sorted(set(result["client_devices"].values())))


def _public(plan: dict[str, Any]) -> dict[str, Any]:
    """The plan as recorded in results: hospitals by name only (where their data lies stays local)."""
    return {**plan, "clients": [{"name": c["name"]} for c in plan["clients"]]}


def _write(result: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(path)


def run_plan(grid: Grid, plan: dict[str, Any], progress: ProgressFn | None = None) -> dict[str, Any]:
    """Train one plan for its rounds; returns (and saves) the result dictionary."""
    import torch

    from fl.devices import describe_device
    from fl.metrics import pooled_metrics
    from fl.models import build_model, shareable_keys
    from fl.registry import get_algorithm
    from fl.strategies import build_strategy, initial_arrays, model_arrays

    torch.set_num_threads(1)
    # the server's own model work (initial weights, aggregation, generators, hypernetworks) is small
    # and stays on the CPU: its arrays are the same on any machine; the clients train on plan["device"]
    with SEEDED:  # the starting weights come from torch's global generator, seeded here
        model = build_model(plan["algorithm"], plan["channels"], len(plan["classes"]), plan["image_size"], plan["seed"],
                            network=plan.get("network", "default"))  # fmt: skip
        params = {n for n, _ in model.named_parameters()}
        strategy = build_strategy(
            plan["algorithm"], plan["hp"], len(plan["clients"]), plan["fraction_train"], plan["lr"],
            param_keys=params, buffer_keys=set(shareable_keys(model)) - params, plan=plan, model=model,
        )  # fmt: skip
        arrays = initial_arrays(plan["algorithm"], model, len(plan["classes"]))
    spec = client_spec(plan)
    keeps_client_models = get_algorithm(plan["algorithm"]).category.value == "personalised"
    round_config = {"spec": spec}
    if getattr(grid, "roster", None):  # a warm simulation's view: tell each node which hospital it is
        round_config["roster"] = json.dumps(grid.roster)
    path = Path(plan["out_dir"]) / "result.json"
    result: dict[str, Any] = {
        "status": "running", "algorithm": plan["algorithm"], "config": _public(plan), "classes": plan["classes"],
        "rounds": [], "final": None, "wall_time_s": 0.0, "result_path": str(path), "error": None,
        "device": describe_device(plan.get("device", "cpu")), "client_devices": {}, "client_precision": {},
    }  # fmt: skip
    start = time.perf_counter()
    _write(result, path)  # replaces any result of an earlier run in this folder
    shutil.rmtree(Path(plan["out_dir"]) / CLIENT_MODELS_DIR, ignore_errors=True)  # and its hospitals' models
    if progress:
        progress({"kind": "start", "algorithm": plan["algorithm"], "round": 0, "rounds": plan["rounds"]})
    for rnd in range(1, plan["rounds"] + 1):
        t0 = time.perf_counter()
        messages = strategy.configure_train(rnd, arrays, ConfigRecord(round_config), grid)
        train_replies = _replies(list(grid.send_and_receive(messages, timeout=plan["timeout_s"])), "training")
        t_train = time.perf_counter() - t0
        new_arrays, train_metrics = strategy.aggregate_train(rnd, train_replies)
        if new_arrays is not None:
            arrays = new_arrays
        evaluate_config = dict(round_config)
        if rnd == plan["rounds"] and keeps_client_models:  # each hospital saves its own model at the end
            # a deployment's plan names the sites' own folder for them (relative to each site's)
            evaluate_config["export-dir"] = plan.get("export_dir") or str(Path(plan["out_dir"]) / CLIENT_MODELS_DIR)
        messages = strategy.configure_evaluate(rnd, arrays, ConfigRecord(evaluate_config), grid)
        t1 = time.perf_counter()
        eval_replies = _replies(list(grid.send_and_receive(messages, timeout=plan["timeout_s"])), "evaluation")
        t_eval = time.perf_counter() - t1
        train_info = {_client_name(m): m.content["metrics"] for m in train_replies}
        _record_devices(result, train_replies + eval_replies)
        reports = {_client_name(m): dict(m.content["metrics"]) for m in eval_replies}
        clients = {
            name: {
                "num_examples": int(r["num-examples"]),
                **{k: _finite(float(r[k])) for k in ("loss", "accuracy", "balanced_accuracy", "auroc")},
                "train_loss": _finite(float(train_info[name]["train_loss"])) if name in train_info else None,
                "local_train_s": float(train_info[name]["local_train_s"]) if name in train_info else None,
                "client_s": float(train_info[name]["client_s"]) if name in train_info else None,
            }
            for name, r in sorted(reports.items())
        }
        pooled = pooled_metrics(list(reports.values()), len(plan["classes"]))
        record = {
            "round": rnd,
            "train_loss": _finite(float(train_metrics["train_loss"])) if train_metrics else None,
            "clients": clients,
            "global": {k: _finite(v) for k, v in pooled.items() if k != "num-examples"}
            | {"num_examples": pooled["num-examples"]},
            "wall_time_s": time.perf_counter() - t0,
            "train_time_s": t_train,
            "eval_time_s": t_eval,
        }
        result["rounds"].append(record)
        result["wall_time_s"] = time.perf_counter() - start
        _write(result, path)
        if progress:
            progress(
                {
                    "kind": "round",
                    "algorithm": plan["algorithm"],
                    "round": rnd,
                    "rounds": plan["rounds"],
                    "record": record,
                }
            )
    result["status"] = "completed"
    last = result["rounds"][-1]
    result["final"] = {"global": last["global"], "clients": last["clients"]}
    _write(result, path)
    weights = model_arrays(arrays, model)
    if weights:
        torch.save({k: torch.from_numpy(v) for k, v in weights.items()}, Path(plan["out_dir"]) / "global_model.pt")
    return result


def run_plans(grid: Grid, plans: list[dict[str, Any]], progress: ProgressFn | None = None) -> list[dict[str, Any]]:
    """Run plans one after another; a failing plan is recorded and the next one still runs."""
    results = []
    for plan in plans:
        try:
            results.append(run_plan(grid, plan, progress))
        except Exception as exc:  # noqa: BLE001 - any failure is recorded as a failed run, as S4 needs
            path = Path(plan["out_dir"]) / "result.json"
            previous = json.loads(path.read_text()) if path.exists() else {}
            failed = {**previous, "status": "failed", "algorithm": plan["algorithm"], "config": _public(plan),
                      "classes": plan["classes"], "rounds": previous.get("rounds", []), "final": None,
                      "wall_time_s": previous.get("wall_time_s", 0.0), "result_path": str(path),
                      "error": f"{type(exc).__name__}: {exc}"}  # fmt: skip
            _write(failed, path)
            results.append(failed)
            if progress:
                progress(
                    {
                        "kind": "failed",
                        "algorithm": plan["algorithm"],
                        "round": 0,
                        "rounds": plan["rounds"],
                        "error": failed["error"],
                    }
                )
    return results


#: the deployment ServerApp: ``flwr run`` passes ``--run-config 'plans-file="/path/plans.json"'``
server_app = ServerApp()


@server_app.main()
def _deployed_main(grid: Grid, context: Context) -> None:
    plans_file = str(context.run_config.get("plans-file", ""))
    if not plans_file:
        raise ValueError("run config 'plans-file' (a JSON list of plans written by fl.deploy) is missing")
    run_plans(grid, json.loads(Path(plans_file).read_text()))
