"""Algorithms whose server learns something beyond averaging: a generator of features that its
clients' heads agree on (FedGen), a classifier calibrated on virtual features from pooled class
statistics (CCVR), a consensus of class scores on public data (FedMD), a discriminator that tells
clients apart by their representations (ADCOL), a running mean of the clients' classifier gradients
(FedIIR).

What the server learns travels back as ``aux.`` arrays beside the weights, so
``fl.strategies.model_arrays`` leaves it out of global_model.pt; FedMD sends no weights at all.
The strategies subclass :class:`fl.algorithms.server_base.PerNode` (for its replies by node; every
node gets the same arrays).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np
import torch
from flwr.serverapp.strategy import Strategy
from torch import nn
from torch.nn import functional as F

from fl.algorithms.base import (
    AUX,
    MIN_CLASS_EXAMPLES,
    ClientAlgorithm,
    split_aux,
    to_numpy,
)
from fl.algorithms.server_base import PerNode, to_record
from fl.models import FEATURE_DIM

Arrays = dict[str, np.ndarray]
HEAD = ("head.weight", "head.bias")

#: FedGen: the authors' generator sizes (noise 32, hidden 256) and 50 server steps a round; Adam at
#: 1e-3 is our choice, so that the generator learns within the few rounds of a short run
NOISE_DIM, GENERATOR_HIDDEN, GENERATOR_STEPS, GENERATOR_BATCH, GENERATOR_LR = 32, 256, 50, 64, 1e-3
#: FedGen: the authors' exponential decay of generative_alpha / beta per round
GENERATIVE_DECAY = 0.98
#: FedGen: the clients' gradient-norm bound (ours): with alpha = beta = 10, three local epochs at lr
#: 0.01 diverged to NaN on the X-ray comparison without it
FEDGEN_MAX_GRAD_NORM = 5.0
#: CCVR: SGD schedule of the head's calibration on the virtual features
CALIBRATION_EPOCHS, CALIBRATION_BATCH, CALIBRATION_LR = 10, 32, 0.01
#: CCVR: config key of the last round, in which clients send class statistics instead of training
CCVR_STATISTICS = "ccvr-statistics"
#: FedMD: the procedural public set (size, seed) and the digest epochs per round (the paper's 1)
PUBLIC_SIZE, PUBLIC_SEED, DIGEST_EPOCHS = 256, 2019, 1
#: ADCOL: representations a client sends a round; the discriminator's width and schedule
REPRESENTATIONS, DISCRIMINATOR_HIDDEN, DISCRIMINATOR_EPOCHS, DISCRIMINATOR_LR = 256, 128, 3, 0.01


def _embed(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Features of ``x`` under ``model``'s body in evaluation mode (BatchNorm statistics untouched)."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        z = torch.cat([model.features(b) for b in x.split(256)])
    model.train(was_training)
    return z


def _fedavg(by_node: dict[int, tuple[Arrays, float]]) -> Arrays:
    """Example-weighted mean of the model's weights; ``aux.`` arrays are not averaged."""
    total = sum(n for _, n in by_node.values())
    first = next(iter(by_node.values()))[0]
    return {k: sum(a[k] * (n / total) for a, n in by_node.values()) for k in first if not k.startswith(AUX)}


def _prefixed(prefix: str, tensors: dict[str, torch.Tensor]) -> Arrays:
    return {prefix + k: v for k, v in to_numpy(tensors).items()}


def _unprefixed(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


def _frozen(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        p.requires_grad_(False)
    return module.eval()


# ---- FedGen ------------------------------------------------------------------------------------
class FeatureGenerator(nn.Module):
    """G(noise, y): a vector of the model's feature space (after the body's ReLU, so non-negative)."""

    def __init__(self, n_classes: int, feature_dim: int = FEATURE_DIM, noise_dim: int = NOISE_DIM,
                 hidden: int = GENERATOR_HIDDEN):  # fmt: skip
        super().__init__()
        self.n_classes, self.noise_dim = n_classes, noise_dim
        self.net = nn.Sequential(
            nn.Linear(noise_dim + n_classes, hidden), nn.ReLU(), nn.Linear(hidden, feature_dim), nn.ReLU()
        )

    def forward(self, noise: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([noise, F.one_hot(y, self.n_classes).float()], dim=1))

    def sample(self, y: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(noise, G(noise, y)) for fresh standard-normal noise."""
        noise = torch.randn(len(y), self.noise_dim, generator=generator, device=y.device)
        return noise, self(noise, y)


def diversity_loss(noise: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """FedGen's guard against mode collapse: exp(-mean(d_noise * d_z)) over pairs, d_noise the mean
    squared and d_z the mean absolute difference; small when distant noises give distant features."""
    d_noise = ((noise[:, None] - noise[None]) ** 2).mean(dim=2)
    d_z = (z[:, None] - z[None]).abs().mean(dim=2)
    return torch.exp(-(d_noise * d_z).mean())


def train_generator(
    generator: FeatureGenerator,
    optimizer: torch.optim.Optimizer,
    heads: list[tuple[torch.Tensor, torch.Tensor]],
    counts: torch.Tensor,
    rng: torch.Generator,
    steps: int = GENERATOR_STEPS,
    batch: int = GENERATOR_BATCH,
) -> float:
    """FedGen's server step: labels y drawn from those some client has, the teacher loss
    sum_k w_k(y) CE(head_k(G(noise, y)), y) with w_k(y) = n_k(y) / sum_j n_j(y) (each client's share
    of the label), plus the diversity loss. Returns the last teacher loss."""
    weights = counts / counts.sum(dim=0).clamp(min=1e-12)  # clients x classes
    labels = torch.nonzero(counts.sum(dim=0) > 0).flatten()
    generator.train()
    teacher = torch.zeros(())
    for _ in range(steps):
        y = labels[torch.randint(len(labels), (batch,), generator=rng)]
        noise, z = generator.sample(y, rng)
        teacher = sum(
            (weights[k, y] * F.cross_entropy(F.linear(z, w, b), y, reduction="none")).mean()
            for k, (w, b) in enumerate(heads)
        )
        optimizer.zero_grad()
        (teacher + diversity_loss(noise, z)).backward()
        optimizer.step()
    generator.eval()
    return float(teacher.detach())


class FedGen(ClientAlgorithm):
    """Zhu, Hong & Zhou 2021, client: once the server has trained its generator, the local loss adds
    alpha * CE(head(G(noise, y_hat)), y_hat) for labels y_hat drawn from the local label set (the
    head learns the ensemble's knowledge) and beta * KL(softmax(head(G(noise, y))) || model(x)) for
    the batch's labels (the authors' latent term), alpha and beta decaying by 0.98 a round. The
    client sends its weights and label counts (the server's ensemble weights)."""

    def assemble(self, received):
        weights, aux = split_aux(received)
        model = super().assemble(weights)
        self.generator = None
        state = _unprefixed("gen.", aux)
        if state:
            self.generator = FeatureGenerator(self.spec.n_classes, model.feature_dim).to(self.device)
            self.generator.load_state_dict(state)
            _frozen(self.generator)
        return model

    def local_train(self, model, global_model):
        if self.generator is None:  # round 1: the server has no generator yet
            return super().local_train(model, global_model)
        decay = GENERATIVE_DECAY ** max(int(self.config.get("server-round", 1)) - 1, 0)
        alpha = float(self.hp.get("generative_alpha", 10.0)) * decay
        beta = float(self.hp.get("generative_beta", 10.0)) * decay
        available = torch.nonzero(torch.tensor(self.data.class_counts()) > 0).flatten()

        def loss_fn(x, y):
            logits = model(x)
            y_hat = available[torch.randint(len(available), (len(y),))].to(y.device)
            with torch.no_grad():
                z_hat = self.generator.sample(y_hat)[1]
                target = F.softmax(model.head(self.generator.sample(y)[1]), dim=1)
            latent = F.kl_div(F.log_softmax(logits, dim=1), target, reduction="batchmean")
            teacher = F.cross_entropy(model.head(z_hat), y_hat)
            return F.cross_entropy(logits, y) + alpha * teacher + beta * latent

        def clip() -> None:  # alpha = beta = 10 on features the generator may scale up: bound the step
            torch.nn.utils.clip_grad_norm_(model.parameters(), FEDGEN_MAX_GRAD_NORM)

        return self.run_epochs(model, self.spec.local_epochs, loss_fn, self.sgd(model.parameters()), clip)[0]

    def payload(self, model):
        counts = np.asarray(self.data.class_counts(), np.float32)
        return {**super().payload(model), AUX + "label_counts": counts}


def _fedgen(*, hp: dict[str, Any], common: dict[str, Any], plan: dict[str, Any], model: nn.Module,
            param_keys: set[str], buffer_keys: set[str]) -> Strategy:

    n_classes = model.head.out_features

    class FedGenServer(PerNode):
        """FedAvg of the weights; then the generator learns from the round's clients' heads (before
        averaging) and goes to the clients as ``aux.gen.*`` arrays. Round 1 sends no generator."""

        def __init__(self, **kwargs: Any):
            super().__init__(**kwargs)
            self.generator = FeatureGenerator(n_classes, model.feature_dim)
            self.optimizer = torch.optim.Adam(self.generator.parameters(), lr=GENERATOR_LR)
            self.rng = torch.Generator().manual_seed(int(plan.get("seed", 0)))

        def aggregate_train(self, server_round, replies):
            replies = list(replies)
            by_node = self._by_node(replies)
            if not by_node:
                return None, None
            uploads = [a for a, _ in by_node.values()]
            heads = [tuple(torch.from_numpy(a[k]) for k in HEAD) for a in uploads]
            counts = torch.from_numpy(np.stack([a[AUX + "label_counts"] for a in uploads]))
            train_generator(self.generator, self.optimizer, heads, counts, self.rng)
            generator = _prefixed(AUX + "gen.", self.generator.state_dict())
            return to_record({**_fedavg(by_node), **generator}), self._metrics(self._valid(replies))

    return FedGenServer(**common)


# ---- CCVR --------------------------------------------------------------------------------------
def class_statistics(features: torch.Tensor, labels: torch.Tensor, n_classes: int) -> dict[str, torch.Tensor]:
    """Per class: mean, unbiased covariance and count of the features; all zero for a class with
    fewer than ``MIN_CLASS_EXAMPLES`` images (they would describe single images)."""
    d = features.shape[1]
    device = features.device
    means, covs = torch.zeros(n_classes, d, device=device), torch.zeros(n_classes, d, d, device=device)
    counts = torch.zeros(n_classes, device=device)
    for c in range(n_classes):
        z = features[labels == c].double()
        if len(z) >= MIN_CLASS_EXAMPLES:
            counts[c] = len(z)
            means[c] = z.mean(dim=0).float()
            covs[c] = torch.cov(z.T).float()
    return {"means": means, "covs": covs, "counts": counts}


def pool_statistics(
    means: np.ndarray, covs: np.ndarray, counts: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CCVR's aggregation (clients on the first axis): the class statistics of all clients' features
    together, by the law of total covariance:
    mu = sum_k N_k mu_k / N; Sigma = (sum_k (N_k - 1) Sigma_k + sum_k N_k mu_k mu_k^T - N mu mu^T) / (N - 1)."""
    means, covs, counts = (np.asarray(a, np.float64) for a in (means, covs, counts))
    total = counts.sum(axis=0)  # classes
    mean = np.einsum("kc,kcd->cd", counts, means) / np.maximum(total, 1)[:, None]
    scatter = np.einsum("kc,kcde->cde", np.maximum(counts - 1, 0), covs)
    scatter += np.einsum("kc,kcd,kce->cde", counts, means, means)
    scatter -= total[:, None, None] * np.einsum("cd,ce->cde", mean, mean)
    cov = scatter / np.maximum(total - 1, 1)[:, None, None]
    return mean, cov, total


def virtual_features(mean: np.ndarray, cov: np.ndarray, count: np.ndarray, per_class: int,
                     rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """``per_class`` draws of N(mu_c, Sigma_c) for every class some client has (Sigma_c through its
    eigen-decomposition, so a singular covariance is fine)."""
    xs, ys = [], []
    for c in np.flatnonzero(count > 0):
        values, vectors = np.linalg.eigh((cov[c] + cov[c].T) / 2)
        root = vectors * np.sqrt(np.clip(values, 0, None))
        xs.append(mean[c] + rng.standard_normal((per_class, len(mean[c]))) @ root.T)
        ys.append(np.full(per_class, c))
    return torch.from_numpy(np.concatenate(xs)).float(), torch.from_numpy(np.concatenate(ys)).long()


def calibrate_head(head: nn.Linear, x: torch.Tensor, y: torch.Tensor, seed: int) -> None:
    """Re-train the classifier alone on the virtual features (cross-entropy, SGD), in place."""
    optimizer = torch.optim.SGD(head.parameters(), lr=CALIBRATION_LR, momentum=0.9)
    rng = torch.Generator().manual_seed(seed)
    for _ in range(CALIBRATION_EPOCHS):
        for idx in torch.randperm(len(y), generator=rng).split(CALIBRATION_BATCH):
            optimizer.zero_grad()
            F.cross_entropy(head(x[idx]), y[idx]).backward()
            optimizer.step()


class CCVR(ClientAlgorithm):
    """Luo et al. 2021, client: FedAvg training; in the last round (the server's ``ccvr-statistics``
    config) it does not train but sends the class means, covariances and counts of the received
    global model's features on its training split (and that model's training loss as train_loss)."""

    def train(self, received, config):
        if not config.get(CCVR_STATISTICS):
            return super().train(received, config)
        model = self.assemble(received)
        features = _embed(model, self.data.train_x)
        with torch.no_grad():
            loss = F.cross_entropy(model.head(features), self.data.train_y)
        stats = class_statistics(features, self.data.train_y, self.spec.n_classes)
        return _prefixed(AUX, stats), {"train_loss": float(loss)}


def _ccvr(*, hp: dict[str, Any], common: dict[str, Any], plan: dict[str, Any], model: nn.Module,
          param_keys: set[str], buffer_keys: set[str]) -> Strategy:

    rounds = int(plan.get("rounds", 1))

    class CCVRServer(PerNode):
        """FedAvg for rounds 1 .. R-1; round R (when R > 1) is the calibration: the clients' class
        statistics are pooled, ``sample_per_class`` virtual features a class drawn from the pooled
        Gaussians, and the global head alone re-trained on them; the body stays as it was sent."""

        def configure_train(self, server_round, arrays, config, grid):
            self.calibrating = rounds > 1 and server_round == rounds
            if self.calibrating:
                config[CCVR_STATISTICS] = True
            return super().configure_train(server_round, arrays, config, grid)

        def aggregate_train(self, server_round, replies):
            if not self.calibrating:
                return super().aggregate_train(server_round, replies)
            replies = list(replies)
            uploads = [a for a, _ in self._by_node(replies).values()]
            if not uploads:
                return None, None
            stacked = (np.stack([a[AUX + k] for a in uploads]) for k in ("means", "covs", "counts"))
            mean, cov, count = pool_statistics(*stacked)
            rng = np.random.default_rng(int(plan.get("seed", 0)))
            x, y = virtual_features(mean, cov, count, int(hp.get("sample_per_class", 200)), rng)
            head = nn.Linear(*self.sent["head.weight"].shape[::-1])
            head.load_state_dict({k.removeprefix("head."): torch.from_numpy(self.sent[k]) for k in HEAD})
            calibrate_head(head, x, y, int(plan.get("seed", 0)))
            calibrated = _prefixed("head.", head.state_dict())
            return to_record({**self.sent, **calibrated}), self._metrics(self._valid(replies))

    return CCVRServer(**common)


# ---- FedMD -------------------------------------------------------------------------------------
@lru_cache(maxsize=4)
def public_images(channels: int, image_size: int, n: int = PUBLIC_SIZE, seed: int = PUBLIC_SEED) -> torch.Tensor:
    """FedMD's public dataset, procedural (nothing is downloaded): ``n`` smooth images of 2-6 random
    Gaussian blobs (random centre, width and signed amplitude) plus faint noise, scaled to [0, 1] as
    the hospitals' images are. A fixed seed makes it the same on every hospital."""
    rng = np.random.default_rng(seed)
    grid = np.linspace(0.0, 1.0, image_size)
    yy, xx = np.meshgrid(grid, grid, indexing="ij")
    images = rng.normal(0.0, 0.05, size=(n, image_size, image_size))
    for image in images:
        for _ in range(rng.integers(2, 7)):
            (cy, cx), width, amplitude = rng.uniform(0, 1, 2), rng.uniform(0.05, 0.3), rng.uniform(-1, 1)
            image += amplitude * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * width**2))
    low, high = images.min(axis=(1, 2), keepdims=True), images.max(axis=(1, 2), keepdims=True)
    images = (images - low) / (high - low)
    return torch.from_numpy(images).float()[:, None].repeat(1, channels, 1, 1)


class FedMD(ClientAlgorithm):
    """Li & Wang 2019, client: the model never leaves the hospital. Each round it digests the last
    consensus (trains its logits on the public set towards the consensus, with the authors' mean
    absolute error, ``DIGEST_EPOCHS`` epochs), revisits its private data (the local epochs) and sends
    its class scores (logits) on the public set. Round 1 has no consensus: private training only
    (the paper's transfer-learning start on a labelled public set has no counterpart here)."""

    keeps_local_model = True

    def assemble(self, received):
        self.consensus = split_aux(received)[1].get("consensus")
        return super().assemble({})

    def public(self) -> torch.Tensor:
        name = str(self.hp.get("public_dataset", "procedural"))
        if name != "procedural":
            raise ValueError(f"FedMD's public dataset can only be 'procedural' here (no downloads), not {name!r}")
        return public_images(self.spec.channels, self.spec.image_size).to(self.device)

    def scores(self, model: nn.Module) -> torch.Tensor:
        """Class scores (logits) on the public set, in evaluation mode."""
        return model.head(_embed(model, self.public()))

    def digest(self, model: nn.Module, consensus: torch.Tensor) -> None:
        """Fit the public-set logits to the consensus."""
        x, rng = self.public(), torch.Generator().manual_seed(self.round_seed)
        optimizer = self.sgd(model.parameters())
        model.train()
        for _ in range(DIGEST_EPOCHS):
            for idx in torch.randperm(len(x), generator=rng).split(self.spec.batch_size):
                optimizer.zero_grad()
                F.l1_loss(model(x[idx]), consensus[idx]).backward()
                optimizer.step()

    def local_train(self, model, global_model):
        if self.consensus is not None:
            self.digest(model, self.consensus)
        return super().local_train(model, global_model)  # revisit

    def payload(self, model):
        with torch.no_grad():
            return {AUX + "scores": self.scores(model).cpu().numpy()}


def _fedmd(*, hp: dict[str, Any], common: dict[str, Any], plan: dict[str, Any], model: nn.Module,
           param_keys: set[str], buffer_keys: set[str]) -> Strategy:
    from flwr.app import ArrayRecord


    def scores_only(arrays: ArrayRecord) -> ArrayRecord:
        return ArrayRecord({k: v for k, v in arrays.items() if k.startswith(AUX)})

    class FedMDServer(PerNode):
        """Only class scores travel: the initial weights are not sent, and the server's arrays are
        the consensus (``aux.consensus``, the plain mean of the clients' scores), so there is no
        global model."""

        def configure_train(self, server_round, arrays, config, grid):
            return super().configure_train(server_round, scores_only(arrays), config, grid)

        def configure_evaluate(self, server_round, arrays, config, grid):
            return super().configure_evaluate(server_round, scores_only(arrays), config, grid)

        def aggregate_train(self, server_round, replies):
            replies = list(replies)
            uploads = [a for a, _ in self._by_node(replies).values()]
            if not uploads:
                return None, None
            consensus = np.mean([a[AUX + "scores"] for a in uploads], axis=0)
            return to_record({AUX + "consensus": consensus}), self._metrics(self._valid(replies))

    return FedMDServer(**common)


# ---- ADCOL -------------------------------------------------------------------------------------
def discriminator(feature_dim: int, n_clients: int, hidden: int = DISCRIMINATOR_HIDDEN) -> nn.Sequential:
    """Representation -> logits over the clients."""
    return nn.Sequential(nn.Linear(feature_dim, hidden), nn.ReLU(), nn.Linear(hidden, n_clients))


def adversarial_loss(disc: nn.Module, z: torch.Tensor) -> torch.Tensor:
    """ADCOL's client term KL(uniform || D(z)): zero when the discriminator cannot tell who sent z."""
    log_p = F.log_softmax(disc(z), dim=1)
    return F.kl_div(log_p, torch.full_like(log_p, 1.0 / log_p.shape[1]), reduction="batchmean")


def train_discriminator(disc: nn.Module, optimizer: torch.optim.Optimizer, z: torch.Tensor, who: torch.Tensor,
                        rng: torch.Generator, epochs: int = DISCRIMINATOR_EPOCHS) -> None:  # fmt: skip
    """Cross-entropy of the sender's index on the clients' representations."""
    disc.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(who), generator=rng).split(64):
            optimizer.zero_grad()
            F.cross_entropy(disc(z[idx]), who[idx]).backward()
            optimizer.step()
    disc.eval()


class ADCOL(ClientAlgorithm):
    """Li, He & Song 2023, client: CE + mu * KL(uniform || D(z)) with the server's discriminator D
    frozen (from round 2; round 1 has none), so that representations stop revealing their hospital.
    It sends its weights and the representations of up to ``REPRESENTATIONS`` training images under
    its trained model. The weights are averaged as in FedAvg, so that there is one model for unseen
    hospitals (FL-bench does the same; in the paper parties exchange representations, not weights)."""

    def assemble(self, received):
        weights, aux = split_aux(received)
        state = _unprefixed("disc.", aux)
        self.discriminator = None
        if state:
            hidden, d = state["0.weight"].shape
            self.discriminator = _frozen(discriminator(d, state["2.weight"].shape[0], hidden).to(self.device))
            self.discriminator.load_state_dict(state)
        return super().assemble(weights)

    def loss(self, model, x, y):
        z = model.features(x)
        loss = F.cross_entropy(model.head(z), y)
        if self.discriminator is not None:
            loss = loss + float(self.hp.get("mu", 0.5)) * adversarial_loss(self.discriminator, z)
        return loss

    def payload(self, model):
        rng = torch.Generator().manual_seed(self.round_seed)
        idx = torch.randperm(len(self.data.train_y), generator=rng)[:REPRESENTATIONS]
        return {**super().payload(model), AUX + "features": _embed(model, self.data.train_x[idx]).cpu().numpy()}


def _adcol(*, hp: dict[str, Any], common: dict[str, Any], plan: dict[str, Any], model: nn.Module,
           param_keys: set[str], buffer_keys: set[str]) -> Strategy:

    n_clients = max(2, len(plan.get("clients", [])))

    class ADCOLServer(PerNode):
        """FedAvg of the weights; the discriminator (kept here, SGD with momentum across rounds)
        learns which client each representation came from and goes out as ``aux.disc.*``."""

        def __init__(self, **kwargs: Any):
            super().__init__(**kwargs)
            self.disc = discriminator(model.feature_dim, n_clients)
            self.optimizer = torch.optim.SGD(self.disc.parameters(), lr=DISCRIMINATOR_LR, momentum=0.9)
            self.rng = torch.Generator().manual_seed(int(plan.get("seed", 0)))
            self.rows: dict[int, int] = {}

        def row(self, node_id: int) -> int:
            """The discriminator's output for this node, assigned on first sight."""
            if node_id not in self.rows:
                if len(self.rows) == n_clients:
                    raise RuntimeError(f"more nodes than the {n_clients} clients of the plan")
                self.rows[node_id] = len(self.rows)
            return self.rows[node_id]

        def aggregate_train(self, server_round, replies):
            replies = list(replies)
            by_node = self._by_node(replies)
            if not by_node:
                return None, None
            z = torch.cat([torch.from_numpy(a[AUX + "features"]) for a, _ in by_node.values()])
            who = torch.cat(
                [torch.full((len(a[AUX + "features"]),), self.row(node)) for node, (a, _) in by_node.items()]
            )
            train_discriminator(self.disc, self.optimizer, z, who, self.rng)
            disc = _prefixed(AUX + "disc.", self.disc.state_dict())
            return to_record({**_fedavg(by_node), **disc}), self._metrics(self._valid(replies))

    return ADCOLServer(**common)


# ---- FedIIR ------------------------------------------------------------------------------------
def classifier_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """Gradient of the cross-entropy on (x, y) with respect to the head, features in evaluation mode."""
    logits = model.head(_embed(model, x))
    grads = torch.autograd.grad(F.cross_entropy(logits, y), [model.head.weight, model.head.bias])
    return dict(zip(HEAD, grads))


class FedIIR(ClientAlgorithm):
    """Guo et al. 2023, client: CE + penalty * ||g_i - g_mean||^2, g_i the gradient of the batch's
    loss with respect to the classifier (kept in the graph, so the body learns features whose
    classifier gradient agrees across clients) and g_mean the server's EMA of the clients' mean
    gradient (from round 2). It sends its weights and the full-batch classifier gradient of the model
    it received, which the server folds into the EMA; so g_mean lags one round behind the model."""

    def assemble(self, received):
        weights, aux = split_aux(received)
        self.grad_mean = _unprefixed("grad_mean.", aux) or None
        return super().assemble(weights)

    def local_train(self, model, global_model):
        self.gradient = classifier_gradient(model, self.data.train_x, self.data.train_y)  # of the received model
        if self.grad_mean is None:
            return super().local_train(model, global_model)
        penalty = float(self.hp.get("penalty", 0.001))
        params = [model.head.weight, model.head.bias]

        def loss_fn(x, y):
            ce = F.cross_entropy(model(x), y)
            grads = torch.autograd.grad(ce, params, create_graph=True)
            return ce + penalty * sum(((g - self.grad_mean[k]) ** 2).sum() for k, g in zip(HEAD, grads))

        return self.run_epochs(model, self.spec.local_epochs, loss_fn, self.sgd(model.parameters()))[0]

    def payload(self, model):
        return {**super().payload(model), **_prefixed(AUX + "grad.", self.gradient)}


def _fediir(*, hp: dict[str, Any], common: dict[str, Any], plan: dict[str, Any], model: nn.Module,
            param_keys: set[str], buffer_keys: set[str]) -> Strategy:

    ema = float(hp.get("ema", 0.95))

    class FedIIRServer(PerNode):
        """FedAvg of the weights; g_mean <- ema * g_mean + (1 - ema) * mean_i g_i (the first round's
        mean as its start), sent as ``aux.grad_mean.*``."""

        def __init__(self, **kwargs: Any):
            super().__init__(**kwargs)
            self.grad_mean: Arrays | None = None

        def aggregate_train(self, server_round, replies):
            replies = list(replies)
            by_node = self._by_node(replies)
            if not by_node:
                return None, None
            mean = {k: np.mean([a[AUX + "grad." + k] for a, _ in by_node.values()], axis=0) for k in HEAD}
            previous = self.grad_mean
            self.grad_mean = mean if previous is None else {k: ema * previous[k] + (1 - ema) * mean[k] for k in HEAD}
            grad_mean = {AUX + "grad_mean." + k: v for k, v in self.grad_mean.items()}
            return to_record({**_fedavg(by_node), **grad_mean}), self._metrics(self._valid(replies))

    return FedIIRServer(**common)


CLIENTS: dict[str, type[ClientAlgorithm]] = {"FedGen": FedGen, "CCVR": CCVR, "FedMD": FedMD, "ADCOL": ADCOL,
                                             "FedIIR": FedIIR}  # fmt: skip
SERVERS = {"FedGen": _fedgen, "CCVR": _ccvr, "FedMD": _fedmd, "ADCOL": _adcol, "FedIIR": _fediir}
