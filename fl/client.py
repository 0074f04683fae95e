"""The ClientApp: one hospital's side of every round (local training and local validation).

In simulation the app is bound to the list of (name, data_dir) and picks its own by Flower's
``partition-id``; on the deployment runtime each SuperNode says where its data is with
``--node-config 'data-dir="/data/harmonised" client-name="hospital_a"'``.
Only weights (or prototypes / control variates), counts and metrics leave the client. After the
last round of a personalised algorithm each hospital saves its own model (``--node-config
'model-dir="..."'`` on a SuperNode; in simulation the training's ``clients/`` folder), which the
outcome scoring evaluates on the held-out set.
"""

from __future__ import annotations

import json
import time
import zlib
from pathlib import Path
from typing import TYPE_CHECKING

from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

if TYPE_CHECKING:
    from fl.data import LocalData


def _identity(context: Context, clients: list[tuple[str, str]] | None, config: ConfigRecord) -> tuple[str, str]:
    """Which hospital this node is: its node config (deployment), the plan's roster (warm simulation,
    see fl.service) or its partition id (one simulation per training)."""
    node = context.node_config
    if "data-dir" in node:
        data_dir = str(node["data-dir"])
        return str(node.get("client-name", Path(data_dir).name)), data_dir
    if "roster" in config:
        name, data_dir = json.loads(str(config["roster"]))[str(context.node_id)]
        if "site-env" in node:  # a hospital's site service: the path is its own, relative to its folder
            return str(node["client-name"]), str(site_path(str(node["site-env"]), str(data_dir)))
        return str(name), str(data_dir)
    if clients is None:
        raise ValueError("this SuperNode has no data: start it with --node-config 'data-dir=\"/path\"'")
    name, data_dir = clients[int(node["partition-id"])]
    return name, data_dir


def site_path(site_env: str, relative: str) -> Path:
    """``relative`` inside a site's folder; a path that would leave it is refused (the coordinator
    names folders, it never reaches outside the site's own)."""
    root = Path(site_env).resolve()
    path = (root / relative).resolve()
    if Path(relative).is_absolute() or not path.is_relative_to(root):
        raise ValueError(f"{relative!r} is not a path inside this site's folder")
    return path


def _handle(msg: Message, context: Context, clients: list[tuple[str, str]] | None, train: bool) -> Message:
    import torch

    from fl.algorithms.base import RunSpec
    from fl.data import load_client_data
    from fl.devices import resolve_device

    start = time.perf_counter()
    torch.set_num_threads(1)
    config = msg.content["config"]
    name, data_dir = _identity(context, clients, config)
    spec = RunSpec(**json.loads(str(config["spec"])))
    device = resolve_device(spec.device)  # this node's own answer to "auto"
    data = load_client_data(
        data_dir, spec.classes, spec.image_size, spec.channels, spec.val_fraction, spec.seed, spec.max_images, device
    )
    return respond(msg, context, name, data, train, start)


def respond(msg: Message, context: Context, name: str, data: LocalData, train: bool,
            start: float | None = None) -> Message:
    """One hospital's reply to a round's message, on its data already loaded: split from the loading
    so that the dry run before a launch (fl.preflight) runs this very code on synthetic tensors."""
    import torch
    from torch.nn import functional as F

    from fl.algorithms import client_algorithm
    from fl.algorithms.base import RunSpec, StateStore
    from fl.devices import autocast_dtype, precision_name
    from fl.metrics import client_metrics

    start = time.perf_counter() if start is None else start
    torch.set_num_threads(1)
    config = msg.content["config"]
    spec = RunSpec(**json.loads(str(config["spec"])))
    device = str(data.val_x.device)  # where the data was loaded (the dry run's synthetic data: the CPU)
    server_round = int(config.get("server-round", 0))
    round_seed = spec.seed * 100_003 + server_round * 1_009 + zlib.crc32(name.encode()) % 10_007
    torch.manual_seed(round_seed)
    store = StateStore(context.state, spec.run_tag, device)
    if "roster" in config:  # a warm simulation: runs follow one another on the same nodes
        store.forget_other_runs()
    algorithm = client_algorithm(spec.algorithm)(spec, data, store, round_seed)
    received = {k: v.to(device) for k, v in msg.content["arrays"].to_torch_state_dict().items()}
    precision = precision_name(autocast_dtype(spec.mixed_precision, device))
    info = ConfigRecord({"name": name, "device": device, "precision": precision})
    if train:
        fit_start = time.perf_counter()
        arrays, metrics = algorithm.train(received, dict(config))
        metrics["local_train_s"] = time.perf_counter() - fit_start
        metrics["client_s"] = time.perf_counter() - start  # local training plus the client's own overhead
        content = RecordDict(
            {
                "arrays": ArrayRecord({k: Array(v) for k, v in arrays.items()}),
                "metrics": MetricRecord({"num-examples": len(data.train_y), **metrics}),
                "client": info,
            }
        )
    else:
        predict = algorithm.predictor(received)
        with torch.no_grad():  # in full precision: the metrics compare across devices
            logits = torch.cat([predict(x) for x in data.val_x.split(256)]).float()
            loss = float(F.cross_entropy(logits, data.val_y))
            probs = torch.softmax(logits, dim=1).cpu().numpy()
        report = client_metrics(data.val_y.cpu().numpy(), probs, loss)
        content = RecordDict({"metrics": MetricRecord(report), "client": info})
        model_dir = context.node_config.get("model-dir") or config.get("export-dir")
        if model_dir and "site-env" in context.node_config:  # a site keeps its models in its own folder
            model_dir = site_path(str(context.node_config["site-env"]), str(model_dir))
        if model_dir:  # the last round of a personalised algorithm: the hospital keeps its own model
            _keep_model(predict, Path(str(model_dir)) / f"{name}.pt")
    return Message(content=content, reply_to=msg)


def _keep_model(model, path: Path) -> None:
    """Save the model this hospital deploys (its personalised one) where it keeps its models; written
    whole or not at all. It stays on the hospital's side: nothing of it is sent to the server."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, tmp)  # loadable without a GPU
    tmp.replace(path)


def make_client_app(clients: list[tuple[str, str]] | None = None) -> ClientApp:
    """A ClientApp; ``clients`` maps simulation partition ids to (name, data_dir)."""
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        return _handle(msg, context, clients, train=True)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        return _handle(msg, context, clients, train=False)

    return app


#: the deployment ClientApp (data location from the SuperNode's node config)
client_app = make_client_app()
