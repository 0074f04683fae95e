"""Personalisation the server computes: a hypernetwork that generates each client's model (pFedHN) or
its layer-wise aggregation weights (pFedLA), and clustering of clients by update direction (CFL).

Each node gets its own arrays from a ``fl.algorithms.server_base.PerNode`` strategy, told apart by its node id.
The clients are the plain local-SGD client (pFedHN keeps its BatchNorm statistics and last trained
weights locally). After the last round the strategy's arrays are still one valid set of weights for
``global_model.pt``: the hypernetwork's model for the example-weighted mean embedding (pFedHN), the
example-weighted mean of the personalised models (pFedLA) or of the cluster models (CFL).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from flwr.serverapp.strategy import Strategy
from torch import nn

from fl.algorithms.base import ClientAlgorithm
from fl.algorithms.server_base import PerNode, to_record


class PFedHNClient(ClientAlgorithm):
    """Shamsian et al. 2021, client: train the generated weights for the local epochs and send them
    back. BatchNorm running statistics stay local (the server generates trainable parameters only).
    The deployed model is the paper's personal model: the generated weights h(e_i) the server sends
    for evaluation, with this hospital's BatchNorm statistics (``assemble``: local state overlaid
    with what was received)."""

    keeps_local_model = True


class _Layout:
    """Order and shapes of the target network's parameters, to go between a flat vector and arrays."""

    def __init__(self, model: nn.Module, keys: list[str]):
        state = model.state_dict()
        self.keys, self.shapes = keys, [tuple(state[k].shape) for k in keys]
        self.sizes = [math.prod(s) for s in self.shapes]

    @property
    def total(self) -> int:
        return sum(self.sizes)

    def flatten(self, arrays: dict[str, Any]) -> torch.Tensor:
        return torch.cat([torch.as_tensor(np.asarray(arrays[k]), dtype=torch.float32).reshape(-1) for k in self.keys])

    def unflatten(self, flat: torch.Tensor) -> dict[str, np.ndarray]:
        parts = flat.detach().split(self.sizes)
        return {k: p.reshape(s).numpy().copy() for k, p, s in zip(self.keys, parts, self.shapes)}


class ChunkedHypernetwork(nn.Module):
    """pFedHN's hypernetwork: (client embedding, chunk embedding) -> MLP -> one chunk of the flat
    weight vector, plus a learnable ``base`` (the output layer's bias of an unchunked hypernetwork)
    that starts at the target network's initial weights, so round 1 sends well-scaled models. Chunking
    keeps the hypernetwork small (about 0.15 M parameters for a 0.1 M-parameter SplitNet)."""

    def __init__(self, n_clients: int, base: torch.Tensor, embed_dim: int = 16, hidden: int = 64, chunk: int = 2048):
        super().__init__()
        self.n_weights = base.numel()
        n_chunks = math.ceil(self.n_weights / chunk)
        self.embeddings = nn.Parameter(torch.randn(n_clients, embed_dim))
        self.chunks = nn.Parameter(torch.randn(n_chunks, embed_dim))
        self.mlp = nn.Sequential(
            nn.Linear(2 * embed_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, chunk)
        )
        with torch.no_grad():  # clients start near the shared base, apart by small generated offsets
            self.mlp[-1].weight.mul_(0.01)
            self.mlp[-1].bias.zero_()
        self.base = nn.Parameter(base.detach().clone().reshape(-1))

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        """The flat weights for one client embedding."""
        x = torch.cat([embedding.expand(len(self.chunks), -1), self.chunks], dim=1)
        return self.mlp(x).reshape(-1)[: self.n_weights] + self.base


class _NodeIndex:
    """Node id -> row (embedding, hypernetwork, stored model), assigned on first sight."""

    def __init__(self, capacity: int):
        self.capacity, self.rows = capacity, {}

    def __call__(self, node_id: int) -> int:
        if node_id not in self.rows:
            if len(self.rows) == self.capacity:
                raise RuntimeError(f"more nodes than the {self.capacity} clients of the plan")
            self.rows[node_id] = len(self.rows)
        return self.rows[node_id]


def _n_clients(plan: dict[str, Any]) -> int:
    return max(1, len(plan.get("clients", [])))


def _weighted_mean(items: list[tuple[dict[str, np.ndarray], float]]) -> dict[str, np.ndarray]:
    total = sum(n for _, n in items)
    return {k: sum(a[k] * (n / total) for a, n in items) for k in items[0][0]}


def _pfedhn(*, hp: dict[str, Any], common: dict[str, Any], plan: dict[str, Any], model: nn.Module,
            param_keys: set[str], buffer_keys: set[str]) -> Strategy:

    class PFedHN(PerNode):
        """Shamsian et al. 2021, server: node i gets h(e_i); after its local training the hypernetwork
        descends <h(e_i), (h(e_i) - theta_i).detach()>, i.e. the clients' delta-theta backpropagated
        through h (summed over the round's clients, as the paper's one-client steps taken at once), with
        SGD (momentum 0.9, the paper's code) at ``hn_lr``. Not Adam: its sign-like first steps move
        every output-layer weight by ``hn_lr``, which shifts the generated weights far more than the
        clients' own updates do (measured: the generated models stop learning)."""

        def __init__(self, **kwargs: Any):
            super().__init__(**kwargs)
            keys = [n for n, _ in model.named_parameters()]
            self.layout = _Layout(model, keys)
            self.hn = ChunkedHypernetwork(_n_clients(plan), self.layout.flatten(model.state_dict()))
            self.optimizer = torch.optim.SGD(self.hn.parameters(), lr=float(hp.get("hn_lr", 0.01)), momentum=0.9)
            self.row = _NodeIndex(_n_clients(plan))
            self.examples: dict[int, float] = {}

        def generate(self, node_id: int) -> torch.Tensor:
            return self.hn(self.hn.embeddings[self.row(node_id)])

        def arrays_for(self, node_id, arrays, message_type):
            with torch.no_grad():
                return to_record(self.layout.unflatten(self.generate(node_id)))

        def aggregate_train(self, server_round, replies):
            replies = list(replies)
            by_node = self._by_node(replies)
            if not by_node:
                return None, None
            self.optimizer.zero_grad()
            for node, (arrays, n) in by_node.items():
                theta = self.generate(node)
                delta = (theta - self.layout.flatten(arrays)).detach()
                (theta * delta).sum().backward()
                self.examples[node] = n
            self.step_without_absent(by_node)
            buffers = _weighted_mean([({k: a[k] for k in buffer_keys if k in a}, n) for a, n in by_node.values()])
            return to_record({**self.global_weights(), **buffers}), self._metrics(self._valid(replies))

        def step_without_absent(self, by_node: dict) -> None:
            """The optimiser step, with the embedding of a node that sent nothing this round (and its
            momentum) left as it was: momentum would otherwise keep moving it without any update."""
            absent = torch.ones(len(self.hn.embeddings), dtype=torch.bool)
            absent[[self.row(node) for node in by_node]] = False
            kept = self.hn.embeddings.detach()[absent].clone()
            self.optimizer.step()
            with torch.no_grad():
                self.hn.embeddings[absent] = kept
                buffer = self.optimizer.state.get(self.hn.embeddings, {}).get("momentum_buffer")
                if buffer is not None:
                    buffer[absent] = 0.0

        def global_weights(self) -> dict[str, np.ndarray]:
            """The hypernetwork's model for the example-weighted mean embedding of the clients seen."""
            rows = [self.row(node) for node in self.examples]
            w = torch.tensor([self.examples[node] for node in self.examples])
            with torch.no_grad():
                mean = (self.hn.embeddings[rows] * (w / w.sum())[:, None]).sum(0)
                return self.layout.unflatten(self.hn(mean))

    return PFedHN(**common)


class LayerAggregationNet(nn.Module):
    """One client's pFedLA hypernetwork: a learnable embedding -> MLP -> for every layer a softmax
    over the clients. The output layer starts at zero: round 1's weights are uniform (FedAvg)."""

    def __init__(self, n_clients: int, n_layers: int, embed_dim: int = 16, hidden: int = 32):
        super().__init__()
        self.shape = (n_layers, n_clients)
        self.embedding = nn.Parameter(torch.randn(embed_dim))
        self.mlp = nn.Sequential(nn.Linear(embed_dim, hidden), nn.ReLU(), nn.Linear(hidden, n_layers * n_clients))
        with torch.no_grad():
            self.mlp[-1].weight.zero_()
            self.mlp[-1].bias.zero_()

    def forward(self) -> torch.Tensor:
        """alpha[l, j]: weight of client j's layer l in this client's model; rows sum to 1."""
        return torch.softmax(self.mlp(self.embedding).reshape(self.shape), dim=1)


def layer_of(key: str) -> str:
    """A layer is a module: its weight, bias and BatchNorm statistics are aggregated together."""
    return key.rsplit(".", 1)[0]


def _pfedla(*, hp: dict[str, Any], common: dict[str, Any], plan: dict[str, Any], model: nn.Module,
            param_keys: set[str], buffer_keys: set[str]) -> Strategy:

    class PFedLA(PerNode):
        """Ma et al. 2022, server: keeps every client's latest model theta_j and, per client i, a
        hypernetwork giving alpha_i[l, j]; client i receives sum_j alpha_i[l, j] theta_j[l] for every
        layer l. After its local training, client i's hypernetwork descends <personalised_i,
        (personalised_i - trained_i).detach()> (delta backpropagated through alpha, with the theta_j
        fixed) with Adam at ``hn_lr``, then theta_i <- trained_i. Adam, not plain SGD: the gradients
        <theta_j[l], delta_i[l]> are so small that SGD at 0.005 moves alpha by ~1e-5 a round (pFedLA
        stays FedAvg for any run we can afford); Adam's steps do not depend on their scale."""

        def __init__(self, **kwargs: Any):
            super().__init__(**kwargs)
            n = _n_clients(plan)
            state = model.state_dict()
            self.keys = [k for k in state if k in param_keys or k in buffer_keys]
            self.layers = list(dict.fromkeys(layer_of(k) for k in self.keys))
            self.models = {k: torch.stack([state[k].detach().float()] * n) for k in self.keys}
            self.nets = [LayerAggregationNet(n, len(self.layers)) for _ in range(n)]
            lr = float(hp.get("hn_lr", 0.005))
            self.optimizers = [torch.optim.Adam(net.parameters(), lr=lr) for net in self.nets]
            self.row = _NodeIndex(n)
            self.examples: dict[int, float] = {}

        def personalised(self, row: int, keys: list[str] | None = None) -> dict[str, torch.Tensor]:
            """Client ``row``'s model: every key mixed with its layer's weights (differentiable in alpha)."""
            alpha = self.nets[row]()
            index = {layer: i for i, layer in enumerate(self.layers)}
            return {k: torch.tensordot(alpha[index[layer_of(k)]], self.models[k], dims=1) for k in keys or self.keys}

        def arrays_for(self, node_id, arrays, message_type):
            with torch.no_grad():
                return to_record({k: v.numpy() for k, v in self.personalised(self.row(node_id)).items()})

        def aggregate_train(self, server_round, replies):
            replies = list(replies)
            by_node = self._by_node(replies)
            if not by_node:
                return None, None
            params = [k for k in self.keys if k in param_keys]
            for node, (arrays, n) in by_node.items():
                row = self.row(node)
                mixed = self.personalised(row, params)
                loss = sum((mixed[k] * (mixed[k] - torch.as_tensor(arrays[k])).detach()).sum() for k in params)
                self.optimizers[row].zero_grad()
                loss.backward()
                self.optimizers[row].step()
                self.examples[node] = n
            for node, (arrays, _) in by_node.items():  # theta_i <- trained_i once every alpha has been updated
                for k in self.keys:
                    self.models[k][self.row(node)] = torch.as_tensor(arrays[k])
            return to_record(self.global_weights()), self._metrics(self._valid(replies))

        def global_weights(self) -> dict[str, np.ndarray]:
            """The example-weighted mean of the personalised models of the clients seen."""
            with torch.no_grad():
                items = [({k: v.numpy() for k, v in self.personalised(self.row(node)).items()}, n)
                         for node, n in self.examples.items()]  # fmt: skip
            return _weighted_mean(items)

    return PFedLA(**common)


def bipartition(similarity: np.ndarray) -> tuple[list[int], list[int]]:
    """CFL's bipartition: complete-linkage agglomerative clustering into two groups on the cosine
    distance, which minimises the largest similarity across the groups (Sattler et al. 2020)."""
    from sklearn.cluster import AgglomerativeClustering

    labels = AgglomerativeClustering(n_clusters=2, metric="precomputed", linkage="complete").fit(1 - similarity).labels_
    return [i for i, c in enumerate(labels) if c == 0], [i for i, c in enumerate(labels) if c == 1]


def start_round(hp: dict[str, Any], rounds: int) -> int:
    """The paper's ``start_round`` clamped so that a short run can still split: min(start_round,
    max(1, rounds - 1)), i.e. at the latest after the second-to-last round's aggregation."""
    return min(int(hp.get("start_round", 20)), max(1, rounds - 1))


def _cfl(*, hp: dict[str, Any], common: dict[str, Any], plan: dict[str, Any], model: nn.Module,
         param_keys: set[str], buffer_keys: set[str]) -> Strategy:

    min_size = int(hp.get("min_cluster_size", 2))
    ratio = float(hp.get("split_ratio", 0.4))
    first = start_round(hp, int(plan.get("rounds", 1)))

    class CFL(PerNode):
        """Sattler et al. 2020: clusters of nodes (first one with every node), each with its own model
        that its nodes receive and FedAvg-update. From round ``start_round`` on, a cluster whose nodes
        all replied is split when the federation is near a stationary point of its joint objective but
        some client is not: ||mean update|| < ``split_ratio`` * max ||update|| (the paper's
        eps1 / eps2 test with eps1 set relative to the largest update, eps2 = 0; norms over trainable
        parameters), into the complete-linkage bipartition of the updates' cosine similarities, if each
        part has at least ``min_cluster_size`` nodes. Measured after one round on X-rays: 0.78-0.84 for
        4 alike hospitals, 0.26-0.28 when two of them swap labels; updates that are pure noise give
        about 1/sqrt(n), so with many clients late rounds can split alike ones (as a too-large eps1 would)."""

        def __init__(self, **kwargs: Any):
            super().__init__(**kwargs)
            self.clusters: list[list[int]] = [[]]
            self.models: list[dict[str, np.ndarray]] = []
            self.examples: dict[int, float] = {}

        def cluster_of(self, node_id: int) -> int:
            """A node not seen yet joins the first cluster."""
            for c, members in enumerate(self.clusters):
                if node_id in members:
                    return c
            self.clusters[0].append(node_id)
            return 0

        def arrays_for(self, node_id, arrays, message_type):
            if not self.models:  # round 1: every cluster model starts from the initial weights
                self.models = [dict(self.sent)]
            return to_record(self.models[self.cluster_of(node_id)])

        def aggregate_train(self, server_round, replies):
            replies = list(replies)
            by_node = self._by_node(replies)
            if not by_node:
                return None, None
            self.examples.update({node: n for node, (_, n) in by_node.items()})
            updates = {
                node: {k: a[k] - self.models[self.cluster_of(node)][k] for k in a} for node, (a, _) in by_node.items()
            }
            if server_round >= first:
                for c in range(len(self.clusters)):
                    self.maybe_split(c, updates)
            for c, members in enumerate(self.clusters):
                replied = [(updates[node], by_node[node][1]) for node in members if node in updates]
                if replied:
                    mean = _weighted_mean(replied)
                    self.models[c] = {k: v + mean[k] for k, v in self.models[c].items()}
            return to_record(self.global_weights()), self._metrics(self._valid(replies))

        def maybe_split(self, c: int, updates: dict[int, dict[str, np.ndarray]]) -> None:
            members = self.clusters[c]
            if len(members) < 2 * min_size or any(node not in updates for node in members):
                return
            flat = np.stack(
                [np.concatenate([updates[node][k].ravel() for k in sorted(param_keys)]) for node in members]
            )
            norms = np.linalg.norm(flat, axis=1)
            if not np.linalg.norm(flat.mean(0)) < ratio * norms.max():
                return
            unit = flat / np.maximum(norms, 1e-12)[:, None]
            part_a, part_b = bipartition(unit @ unit.T)
            if min(len(part_a), len(part_b)) >= min_size:
                self.clusters[c] = [members[i] for i in part_a]
                self.clusters.append([members[i] for i in part_b])
                self.models.append(dict(self.models[c]))

        def global_weights(self) -> dict[str, np.ndarray]:
            """The cluster models averaged by the clusters' numbers of training examples."""
            items = [
                (m, sum(self.examples.get(node, 0.0) for node in members))
                for m, members in zip(self.models, self.clusters)
            ]
            items = [(m, n) for m, n in items if n > 0]
            return _weighted_mean(items)

    return CFL(**common)


CLIENTS: dict[str, type[ClientAlgorithm]] = {
    "pFedHN": PFedHNClient,
    "pFedLA": ClientAlgorithm,  # trains the personalised aggregate it receives and deploys it
    "CFL": ClientAlgorithm,  # trains its cluster's model and deploys it
}
SERVERS = {"pFedHN": _pfedhn, "pFedLA": _pfedla, "CFL": _cfl}
