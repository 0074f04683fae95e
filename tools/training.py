"""S4's tools: launch federated training on the harmonised client data, and report its status.

The server agent names an algorithm and the participating clients; where each client's data lies
is bound into the tool by the workflow (the server never sees client paths). Training runs on
Flower through :func:`fl.runner.run_training`; the result (metrics only) is written to
``<server workspace>/<out>/result.json``. Before any site trains, the chosen algorithm runs one round
on synthetic data of the federation's shape in this process (:mod:`fl.preflight`); if that dry run
fails, the launch stops with its reason and result.json says ``preflight_failed``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import BaseModel, Field

from fl import CLIENT_MODELS_DIR

if TYPE_CHECKING:
    from fl.preflight import PreflightResult
    from fl.runner import TrainConfig

#: one Flower simulation at a time per process (concurrent benchmark runs share one machine)
_TRAINING_LOCK = threading.Lock()
#: a folder for results of identical trainings (same data bytes, algorithm and settings); unset: none
CACHE_ENV = "FEDAGENTBENCH_TRAINING_CACHE"
#: the server's trained global model, in the training's Flower output folder (fl.server)
MODEL_FILE = "global_model.pt"
#: "0": a fresh Flower simulation per training instead of the process's warm one (fl.service)
WARM_ENV = "FEDAGENTBENCH_WARM_TRAINING"
#: result.json's status when the dry run before a launch failed (no site trained; fl.preflight)
PREFLIGHT_FAILED = "preflight_failed"


class LaunchArgs(BaseModel):
    algorithm: str = Field(description="FL algorithm name exactly as in the registry, e.g. FedAvg or FedBN")
    clients: list[str] | None = Field(default=None, description="client names to train with; default: all approved")


class StatusArgs(BaseModel):
    pass


def _summary(result: dict) -> str:
    final = (result.get("final") or {}).get("global") or {}
    metrics = ", ".join(f"{k} {v:.3f}" for k, v in final.items() if isinstance(v, float))
    rounds = len(result.get("rounds") or [])
    text = f"status: {result.get('status')}; algorithm {result.get('algorithm')}; {rounds} round(s)"
    if metrics:
        text += f"; final global metrics: {metrics}"
    if result.get("error"):
        text += f"; error: {result['error'][:300]}"
    return text


def _fingerprint(algorithm: str, client_dirs: dict[str, Path], settings: dict) -> str:
    """Hash of everything a training result depends on: every image's bytes, algorithm, settings."""
    digest = hashlib.sha256(json.dumps({"algorithm": algorithm, **settings}, sort_keys=True).encode())
    for name in sorted(client_dirs):
        root = Path(client_dirs[name])
        digest.update(name.encode())
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            digest.update(path.relative_to(root).as_posix().encode())
            digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def _train(config, fingerprint: str) -> dict:
    """Run (or, with a cache folder set, reuse the result of an identical earlier) training."""
    from fl.runner import run_training, run_training_warm

    train = run_training if os.environ.get(WARM_ENV, "1") == "0" else run_training_warm
    cache_dir = os.environ.get(CACHE_ENV)
    cached = Path(cache_dir) / f"{fingerprint}.json" if cache_dir else None
    model = Path(config.out_dir) / MODEL_FILE
    client_models = Path(config.out_dir) / CLIENT_MODELS_DIR
    result = json.loads(cached.read_text("utf-8")) if cached is not None and cached.is_file() else None
    usable = result is not None and "client_models" in result and (  # older entries kept no models
        not result["client_models"] or cached.with_suffix(".clients").is_dir())
    if usable:  # else: train again
        result["cached"] = True
        result["queue_wait_s"] = 0.0
        if cached.with_suffix(".pt").is_file():  # the trained models too: the outcome is scored on them
            model.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(cached.with_suffix(".pt"), model)
        if result["client_models"]:
            shutil.rmtree(client_models, ignore_errors=True)
            shutil.copytree(cached.with_suffix(".clients"), client_models)
        return result
    asked = time.perf_counter()
    with _TRAINING_LOCK:
        waited = time.perf_counter() - asked
        result = train(config).model_dump(mode="json", by_alias=True)
    result["queue_wait_s"] = round(waited, 2)  # behind other runs' trainings (scripts/bench_real_scale.py)
    result["client_models"] = sorted(p.stem for p in client_models.glob("*.pt")) if client_models.is_dir() else []
    if cached is not None and result.get("status") == "completed":
        cached.parent.mkdir(parents=True, exist_ok=True)
        tag = f"{os.getpid()}.{threading.get_ident()}"
        if model.is_file():  # the models first: a result in the cache promises its models are there
            tmp = cached.with_suffix(f".{tag}.pt.tmp")
            shutil.copyfile(model, tmp)
            tmp.replace(cached.with_suffix(".pt"))
        if result["client_models"] and not cached.with_suffix(".clients").is_dir():
            tmp = cached.with_suffix(f".{tag}.clients.tmp")
            shutil.copytree(client_models, tmp)
            try:
                tmp.rename(cached.with_suffix(".clients"))
            except OSError:  # an identical training of another run got there first
                shutil.rmtree(tmp, ignore_errors=True)
        tmp = cached.with_suffix(f".{tag}.tmp")
        tmp.write_text(json.dumps(result), "utf-8")
        tmp.replace(cached)
    return result


class RemoteTraining(Protocol):
    """Training that runs elsewhere (a deployment's sites): the plan from the sites' descriptions of
    their data, and the run of a plan."""

    def resolve(self, config: Any) -> dict[str, Any]: ...

    def run(self, plan: dict[str, Any]) -> dict[str, Any]: ...


def _preflight(config: TrainConfig, remote: RemoteTraining | None = None) -> tuple[PreflightResult, dict[str, Any]]:
    """The dry run of the config's algorithm (fl.preflight) on synthetic data of its federation's
    shape, and the plan it checked. Resolving the config once more here is cheap (folder scans and a
    few image headers, or the sites' descriptions) and raises the same ValueError / FileNotFoundError
    the training would."""
    from fl.preflight import preflight
    from fl.runner import resolve

    plan = remote.resolve(config) if remote is not None else resolve(config)
    return preflight(plan), plan


def build_training_tools(out_dir: Path, client_dirs: dict[str, Path], *, rounds: int = 1,
                         local_epochs: int = 1, seed: int = 0, device: str = "auto", network: str = "default",
                         image_size: int | None = None, remote: RemoteTraining | None = None) -> list:
    """``launch_training`` and ``training_status`` bound to this run's clients and output folder
    (``out_dir``, in the server's work area; ``result.json`` there records metrics and the clients).
    ``device``, ``network`` and ``image_size`` are the run's training settings (``fl.runner.TrainConfig``).
    ``remote``: where the training runs when not on this machine's Flower simulation (a deployment's
    sites; ``client_dirs`` are then the sites' own references)."""
    from langchain_core.tools import StructuredTool

    out = Path(out_dir)
    result_file = out / "result.json"

    def launch_training(algorithm: str, clients: list[str] | None = None) -> str:
        from fl.devices import resolve_device
        from fl.runner import ClientSpec, TrainConfig

        chosen = clients or sorted(client_dirs)
        unknown = [c for c in chosen if c not in client_dirs]
        if unknown:
            return f"error: unknown or unapproved clients {unknown}; approved: {sorted(client_dirs)}"
        if result_file.is_file():
            return "error: training for this run has already been launched; " + training_status()
        try:
            config = TrainConfig(
                clients=[ClientSpec(name=c, data_dir=client_dirs[c]) for c in chosen], algorithm=algorithm,
                rounds=rounds, local_epochs=local_epochs, seed=seed, out_dir=out / "flower",
                device=device, network=network, image_size=image_size,
            )
            check, plan = _preflight(config, remote)
            if not check.ok:  # nothing was sent to any site: the launch stops here, with the reason
                _record({"status": PREFLIGHT_FAILED, "algorithm": check.algorithm, "rounds": [], "final": None,
                         "error": check.error, "preflight_s": round(check.seconds, 3), "clients": sorted(chosen)})
                return f"error: the dry run of {algorithm} failed before any site trained: {check.error}"
            settings = {"rounds": rounds, "local_epochs": local_epochs, "seed": seed, "clients": chosen}
            if remote is not None:
                result = remote.run(plan)
            else:
                # only settings off their defaults join the key, so that earlier cache entries stay valid;
                # the device as resolved here (a GPU's result is not a CPU's)
                on = resolve_device(device)
                extra = {"network": network, "image_size": image_size, "device": on.partition(":")[0]}
                settings |= {k: v for k, v in extra.items() if v not in ("default", None, "cpu")}
                result = _train(config, _fingerprint(algorithm, {c: client_dirs[c] for c in chosen}, settings))
            result["preflight_s"] = round(check.seconds, 3)
        except (ValueError, FileNotFoundError) as exc:
            return f"error: training could not start: {exc}"
        except Exception as exc:  # a crash inside Flower is a failed run, reported to the agent
            result = {"status": "failed", "algorithm": algorithm, "rounds": [], "final": None,
                      "error": f"{type(exc).__name__}: {str(exc)[:300]}"}
        result["clients"] = sorted(chosen)
        _record(result)
        return "training finished. " + _summary(result)

    def _record(result: dict) -> None:
        out.mkdir(parents=True, exist_ok=True)
        tmp = result_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=1), "utf-8")
        tmp.replace(result_file)

    def training_status() -> str:
        if not result_file.is_file():
            return "status: not started"
        return _summary(json.loads(result_file.read_text("utf-8")))

    return [
        StructuredTool.from_function(func=launch_training, name="launch_training", args_schema=LaunchArgs,
                                     description="Start federated training with the chosen algorithm on the "
                                                 "approved clients' harmonised data; returns when it has finished."),
        StructuredTool.from_function(func=training_status, name="training_status", args_schema=StatusArgs,
                                     description="Report the status and final metrics of this run's training."),
    ]
