"""Personalisation through what each client represents: mixtures of models (FedEM), a local memory
(kNN-Per), a shared representation (FLUTE), a local feature distribution (pFedFDA).

Every deployed model is one network of the algorithm's architecture (``MODELS``): FedEM's mixture
weights and kNN-Per's datastore are personal buffers of their networks (never sent, but saved with
the hospital's model), FLUTE's and pFedFDA's personal heads are the plain linear head.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from flwr.serverapp.strategy import Strategy
from torch import nn
from torch.nn import functional as F

from fl.algorithms.base import AUX, MIN_CLASS_EXAMPLES, ClientAlgorithm, split_aux
from fl.algorithms.personalised import FedPer, head_keys
from fl.algorithms.server_base import CustomStrategy, with_aux
from fl.models import SplitNet


@torch.no_grad()
def embed(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Eval-mode features of ``x`` (BatchNorm running statistics, no gradient)."""
    model.eval()
    return torch.cat([model.features(batch) for batch in x.split(256)])


class PersonalBuffers(ClientAlgorithm):
    """A client whose network holds personal buffers (``PERSONAL``): never sent, and the server's
    copies (its initial values) are ignored on arrival."""

    PERSONAL: tuple[str, ...] = ()

    def personal_keys(self, model):
        return set(self.PERSONAL)

    def assemble(self, received):
        return super().assemble({k: v for k, v in received.items() if k not in self.PERSONAL})


# ---- FedEM (Marfoq et al. 2021) ------------------------------------------------------------------
#: FedEM's number of components M: part of the architecture (the registry's ``n_learners``)
N_LEARNERS = 3


class MixtureNet(nn.Module):
    """M component networks (keys ``learners.<m>.*``, averaged learner by learner like any weights)
    and this client's mixture weights ``pi`` (a personal buffer). Predicts log sum_m pi_m p_m(y|x)."""

    PERSONAL = ("pi",)

    def __init__(self, in_channels: int, n_classes: int, image_size: int, n_learners: int = N_LEARNERS,
                 network: str = "default"):  # fmt: skip
        super().__init__()
        self.learners = nn.ModuleList(SplitNet(in_channels, n_classes, image_size, network=network)
                                      for _ in range(n_learners))  # fmt: skip
        self.register_buffer("pi", torch.full((n_learners,), 1.0 / n_learners))

    def learner_log_probs(self, x: torch.Tensor) -> torch.Tensor:
        """log p_m(y|x) for every learner: [batch, M, classes]."""
        return torch.stack([F.log_softmax(learner(x), dim=1) for learner in self.learners], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.logsumexp(self.pi.log().view(1, -1, 1) + self.learner_log_probs(x), dim=1)


def _label_log_likelihood(log_probs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """log p_m(y_i|x_i) from [batch, M, classes] log-probabilities: [batch, M]."""
    return log_probs.gather(2, y.view(-1, 1, 1).expand(-1, log_probs.shape[1], 1)).squeeze(2)


class FedEM(PersonalBuffers):
    """E-step: q_m(i) ∝ pi_m exp(-loss_m(x_i, y_i)) under the received learners; pi = mean_i q(i);
    M-step: each learner descends its q-weighted loss. The server averages the learners (FedAvg);
    pi stays on the client, and the client predicts with its pi-weighted mixture."""

    PERSONAL = MixtureNet.PERSONAL

    def assemble(self, received):
        model = super().assemble(received)
        wanted = int(self.hp.get("n_learners", N_LEARNERS))
        if wanted != len(model.learners):
            raise ValueError(f"FedEM's network has {len(model.learners)} learners, not n_learners={wanted}")
        stored = self.store.load("pi")
        if stored is not None:
            model.pi.copy_(stored["pi"])
        return model

    @staticmethod
    @torch.no_grad()
    def responsibilities(model: MixtureNet, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """q(z=m | x_i, y_i) for every sample: [n, M], rows sum to 1."""
        model.eval()
        log_lik = torch.cat([_label_log_likelihood(model.learner_log_probs(xb), yb)
                             for xb, yb in zip(x.split(256), y.split(256))])  # fmt: skip
        return torch.softmax(model.pi.log() + log_lik, dim=1)

    def local_train(self, model, global_model):
        q = self.responsibilities(model, self.data.train_x, self.data.train_y)
        model.pi.copy_(q.mean(0))
        self.store.save("pi", {"pi": model.pi})
        optimizer = self.sgd(model.parameters())
        model.train()
        total, steps = 0.0, 0
        for epoch in range(self.spec.local_epochs):
            order = torch.randperm(len(q), generator=torch.Generator().manual_seed(self.round_seed + epoch))
            for idx in order.split(self.spec.batch_size):
                nll = -_label_log_likelihood(model.learner_log_probs(self.data.train_x[idx]), self.data.train_y[idx])
                loss = (q[idx] * nll).sum(1).mean()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                total, steps = total + float(loss.detach()), steps + 1
        return total / max(steps, 1)


# ---- kNN-Per (Marfoq et al. 2022) ----------------------------------------------------------------
#: rows of kNN-Per's datastore buffer: the registry's ``capacity`` can be at most this
KNN_CAPACITY = 500


def knn_distribution(
    query: torch.Tensor, keys: torch.Tensor, labels: torch.Tensor, k: int, n_classes: int, leave_one_out: bool = False
) -> torch.Tensor:
    """p_kNN(y|x) ∝ sum over the k nearest keys (Euclidean) with label y of exp(-distance), as in
    the paper; ``leave_one_out`` skips each query's own entry (query = keys)."""
    distances = torch.cdist(query, keys)
    if leave_one_out:
        distances.fill_diagonal_(math.inf)
    k = min(k, keys.shape[0] - int(leave_one_out))
    nearest, idx = distances.topk(k, dim=1, largest=False)
    weights = torch.softmax(-nearest, dim=1)
    return torch.zeros(len(query), n_classes, device=weights.device, dtype=weights.dtype).scatter_add_(
        1, labels[idx], weights)


class KNNPerNet(SplitNet):
    """The global network plus this client's datastore of (feature, label) and its k and lambda, as
    personal buffers of fixed size. With an empty datastore it is the plain network (logits);
    otherwise it returns log(lambda p_kNN + (1 - lambda) softmax(logits))."""

    PERSONAL = ("memory_features", "memory_labels", "memory_size", "knn_k", "knn_lambda")

    def __init__(self, in_channels: int, n_classes: int, image_size: int, capacity: int = KNN_CAPACITY,
                 network: str = "default"):  # fmt: skip
        super().__init__(in_channels, n_classes, image_size, network=network)
        self.register_buffer("memory_features", torch.zeros(capacity, self.feature_dim))
        self.register_buffer("memory_labels", torch.zeros(capacity, dtype=torch.long))
        self.register_buffer("memory_size", torch.zeros((), dtype=torch.long))
        self.register_buffer("knn_k", torch.ones((), dtype=torch.long))
        self.register_buffer("knn_lambda", torch.zeros(()))

    @torch.no_grad()
    def remember(self, features: torch.Tensor, labels: torch.Tensor, k: int, lam: float) -> None:
        n = len(labels)
        self.memory_features.zero_()[:n] = features
        self.memory_labels.zero_()[:n] = labels
        self.memory_size.fill_(n)
        self.knn_k.fill_(k)
        self.knn_lambda.fill_(lam)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.features(x)
        logits = self.head(features)
        n = int(self.memory_size)
        if n == 0:
            return logits
        p_knn = knn_distribution(features, self.memory_features[:n], self.memory_labels[:n], int(self.knn_k),
                                 logits.shape[1])  # fmt: skip
        mixed = self.knn_lambda * p_knn + (1 - self.knn_lambda) * torch.softmax(logits, dim=1)
        return mixed.clamp_min(1e-12).log()  # a class no neighbour has keeps a finite loss


class KNNPer(PersonalBuffers):
    """Training is FedAvg. To predict, the client stores the global network's features of up to
    ``capacity`` training samples and mixes the kNN distribution with the network's softmax; lambda
    minimises the leave-one-out cross-entropy on that datastore (the paper tunes it on held-out data,
    here the validation split is what the evaluation scores, so it is not used)."""

    PERSONAL = KNNPerNet.PERSONAL

    LAMBDAS = torch.linspace(0.0, 1.0, 11)

    def predictor(self, received):
        model = self.assemble(received)
        k, capacity = int(self.hp.get("k", 5)), int(self.hp.get("capacity", KNN_CAPACITY))
        if not 1 <= capacity <= len(model.memory_labels):
            raise ValueError(f"kNN-Per's capacity must be within 1..{len(model.memory_labels)}, got {capacity}")
        keep = torch.randperm(len(self.data.train_y), generator=torch.Generator().manual_seed(self.spec.seed))
        keep = keep[:capacity]
        features, labels = embed(model, self.data.train_x[keep]), self.data.train_y[keep]
        model.remember(features, labels, k, self.tune_lambda(model, features, labels, k))
        return model.eval()

    def tune_lambda(self, model: KNNPerNet, features: torch.Tensor, labels: torch.Tensor, k: int) -> float:
        if len(labels) < 2:
            return 0.0
        with torch.no_grad():
            p_model = torch.softmax(model.head(features), dim=1)
        p_knn = knn_distribution(features, features, labels, k, p_model.shape[1], leave_one_out=True)
        true_model, true_knn = p_model.gather(1, labels[:, None]), p_knn.gather(1, labels[:, None])
        lambdas = self.LAMBDAS.to(features.device)
        mixed = lambdas[None, :] * true_knn + (1 - lambdas[None, :]) * true_model  # [n, lambdas]
        return float(lambdas[(-mixed.clamp_min(1e-12).log()).mean(0).argmin()])


# ---- FLUTE (Liu, Shen & Yang 2024) ---------------------------------------------------------------
def etf_misalignment(weight: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """|| W W^T / ||W W^T||_F  -  (I - 11^T/C) / sqrt(C-1) ⊙ l l^T ||_F: how far the head's Gram
    matrix is from a simplex equiangular frame over the classes this client has (l: 0/1 per class)."""
    n_classes = weight.shape[0]
    gram = weight @ weight.T
    frame = (torch.eye(n_classes, device=weight.device) - 1.0 / n_classes) / math.sqrt(n_classes - 1)
    return torch.linalg.norm(gram / torch.linalg.norm(gram) - frame * torch.outer(present, present))


class FLUTE(FedPer):
    """Shared body (averaged), personal head (never sent). Each round: ``local_epochs`` epochs of the
    head on the frozen body, then ``rep_round`` epochs of body and head together. The loss adds
    lamda1 * the head's misalignment with a simplex frame of the local classes, lamda2 * ||W||_F^2,
    and, in the representation epochs, lamda3 * mean ||phi(x)||^2. Simplified from the paper: the
    server's extra step on the clients' heads is left out (heads stay on the client)."""

    def local_train(self, model, global_model):
        defaults = {"lamda1": 0.25, "lamda2": 0.0025, "lamda3": 0.0005}
        lam1, lam2, lam3 = (float(self.hp.get(name, value)) for name, value in defaults.items())
        present = (torch.tensor(self.data.class_counts(), device=self.device) > 0).float()
        head = list(model.head.parameters())
        body = [p for n, p in model.named_parameters() if not n.startswith("head.")]

        def loss_fn(representation: bool):
            def loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
                features = model.features(x)
                w = model.head.weight
                value = F.cross_entropy(model.head(features), y) + lam1 * etf_misalignment(w, present)
                value = value + lam2 * w.pow(2).sum()
                return value + lam3 * features.pow(2).sum(1).mean() if representation else value

            return loss

        for p in body:
            p.requires_grad_(False)
        loss, _ = self.run_epochs(model, self.spec.local_epochs, loss_fn(False), self.sgd(head))
        for p in body:
            p.requires_grad_(True)
        rep_epochs = int(self.hp.get("rep_round", 1))
        if rep_epochs > 0:
            loss, _ = self.run_epochs(model, rep_epochs, loss_fn(True), self.sgd(model.parameters()))
        return loss


# ---- pFedFDA (McLaughlin et al. 2024) ------------------------------------------------------------
#: interpolation coefficients pFedFDA's cross-validation chooses from
BETAS = torch.linspace(0.0, 1.0, 11, dtype=torch.float64)


def gaussian_statistics(
    features: torch.Tensor, labels: torch.Tensor, n_classes: int, fallback_means: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(class means, shared within-class covariance + I, add-one smoothed class prior) in float64; a
    class this client lacks keeps ``fallback_means``' row (the global mean). The identity ridge is
    the one of the authors' code: features outnumber a client's samples, so the sample covariance
    alone is singular, and it keeps the weights of the head the body trains under bounded (without
    it the body's training diverged)."""
    features = features.double()
    counts = torch.bincount(labels, minlength=n_classes).double()
    means = fallback_means.double().clone()
    sums = torch.zeros_like(means).index_add_(0, labels, features)
    seen = counts > 0
    means[seen] = sums[seen] / counts[seen, None]
    centred = features - means[labels]
    cov = centred.T @ centred / max(len(labels) - 1, 1) + torch.eye(
        features.shape[1], dtype=torch.float64, device=features.device)
    return means, cov, (counts + 1) / (counts.sum() + n_classes)


def lda_head(means: torch.Tensor, cov: torch.Tensor, prior: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The linear head equal to the Gaussian (shared covariance) posterior: w_c = Sigma^-1 mu_c,
    b_c = -1/2 mu_c^T Sigma^-1 mu_c + log prior_c."""
    weight = torch.linalg.solve(cov.double(), means.double().T).T
    return weight, -0.5 * (weight * means.double()).sum(1) + prior.double().log()


def stratified_folds(labels: torch.Tensor, n_folds: int, seed: int) -> torch.Tensor:
    """Fold index per sample, each class dealt round-robin over the folds after a seeded shuffle."""
    folds = torch.empty_like(labels)
    generator = torch.Generator().manual_seed(seed)
    for c in labels.unique():
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=generator)]
        folds[idx] = torch.arange(len(idx), device=labels.device) % n_folds
    return folds


def choose_beta(
    features: torch.Tensor, labels: torch.Tensor, global_means: torch.Tensor, global_cov: torch.Tensor,
    n_folds: int, seed: int,
) -> float:  # fmt: skip
    """The beta in [0, 1] whose interpolated statistics (beta local + (1 - beta) global) give the
    LDA classifier the lowest cross-entropy on held-out folds of the local data."""
    if n_folds < 2:
        raise ValueError(f"pFedFDA's num_cv_folds must be at least 2, got {n_folds}")
    n_classes = global_means.shape[0]
    folds = stratified_folds(labels, n_folds, seed)
    losses = torch.zeros(len(BETAS), dtype=torch.float64, device=features.device)
    for fold in range(n_folds):
        train, test = folds != fold, folds == fold
        if train.sum() < 2 or not test.any():
            continue
        means, cov, prior = gaussian_statistics(features[train], labels[train], n_classes, global_means)
        for i, beta in enumerate(BETAS):
            w, b = lda_head(beta * means + (1 - beta) * global_means, beta * cov + (1 - beta) * global_cov, prior)
            losses[i] += F.cross_entropy(features[test].double() @ w.T + b, labels[test], reduction="sum")
    return float(BETAS[int(losses.argmin())])


class PFedFDA(ClientAlgorithm):
    """The body is averaged; the head is the LDA classifier of Gaussian class-conditional feature
    statistics (class means, shared covariance, local class prior). As in the authors' code, the body
    trains under the fixed head of the global statistics; each client then sends its local statistics
    (``aux.`` arrays) beside the body, which FedAvg averages weighted by sample count, except the class
    means: pooled per class by the clients' class counts (``aux.share``: each class's fraction of the
    client's examples), so a client with few images of a class moves that class's mean little. The deployed
    head interpolates local and global statistics by a beta chosen by cross-validation (one beta for
    means and covariance, from a grid of 11). Round 1 has no global statistics: the local ones serve."""

    def shared_keys(self, model):
        return [k for k in super().shared_keys(model) if k not in head_keys(model)]

    def assemble(self, received):
        weights, aux = split_aux(received)
        estimated = "estimated" in aux and float(aux["estimated"].max()) > 0
        self.global_stats = (aux["means"].double(), aux["cov"].double()) if estimated else None
        return super().assemble(weights)

    def local_statistics(self, model: nn.Module) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(features of the training split, class means, covariance, prior) under ``model``'s body."""
        features = embed(model, self.data.train_x)
        fallback = self.global_stats[0] if self.global_stats else torch.zeros(
            self.spec.n_classes, features.shape[1], device=features.device)
        return features, *gaussian_statistics(features, self.data.train_y, self.spec.n_classes, fallback)

    def set_head(self, model: nn.Module, adapt: bool) -> float:
        """Fold the LDA classifier into ``model.head``: of the global statistics (``adapt`` False) or
        of the interpolated ones with the cross-validated beta; returns the beta used."""
        features, means, cov, prior = self.local_statistics(model)
        beta = 1.0
        if self.global_stats is not None:
            global_means, global_cov = self.global_stats
            if adapt:
                folds = int(self.hp.get("num_cv_folds", 2))
                beta = choose_beta(features, self.data.train_y, global_means, global_cov, folds, self.spec.seed)
            else:
                beta = 0.0
            means, cov = beta * means + (1 - beta) * global_means, beta * cov + (1 - beta) * global_cov
        weight, bias = lda_head(means, cov, prior)
        with torch.no_grad():
            model.head.weight.copy_(weight)
            model.head.bias.copy_(bias)
        return beta

    def local_train(self, model, global_model):
        self.set_head(model, adapt=False)
        body = [p for n, p in model.named_parameters() if not n.startswith("head.")]
        return self.run_epochs(
            model, self.spec.local_epochs, lambda x, y: F.cross_entropy(model(x), y), self.sgd(body)
        )[0]

    def payload(self, model):
        out = super().payload(model)
        _, means, cov, prior = self.local_statistics(model)
        counts = torch.tensor(self.data.class_counts(), dtype=torch.float64, device=means.device)
        small = counts < MIN_CLASS_EXAMPLES  # their mean would describe single images: send the fallback
        fallback = self.global_stats[0] if self.global_stats else torch.zeros_like(means)
        means = torch.where(small[:, None], fallback.to(means.dtype), means)
        share = counts.masked_fill(small, 0.0) / max(len(self.data.train_y), 1)
        stats = {"means": means, "cov": cov, "prior": prior, "share": share, "estimated": torch.ones(1)}
        out.update({AUX + k: v.float().cpu().numpy() for k, v in stats.items()})
        return out

    def predictor(self, received):
        model = self.assemble(received)
        self.set_head(model, adapt=True)
        return model.eval()


def fda_initial(model: nn.Module, n_classes: int) -> dict[str, np.ndarray]:
    """Round 1's placeholder global statistics (``estimated`` = 0: clients use their own)."""
    d = model.feature_dim
    return {"means": np.zeros((n_classes, d), np.float32), "cov": np.eye(d, dtype=np.float32),
            "prior": np.full(n_classes, 1.0 / n_classes, np.float32), "share": np.zeros(n_classes, np.float32),
            "estimated": np.zeros(1, np.float32)}  # fmt: skip


def pooled_class_means(uploads: list[tuple[dict[str, np.ndarray], float]]) -> np.ndarray:
    """Each class's mean over all clients' features of that class, sum_k N_kc mu_kc / sum_k N_kc
    with N_kc = n_k * share_kc, from (arrays, n_k) uploads; a class no client has keeps the
    example-weighted mean of the means sent (every client's fallback for it, the last global mean)."""
    total = sum(n for _, n in uploads)
    plain = sum(a[AUX + "means"].astype(np.float64) * n for a, n in uploads) / max(total, 1e-12)
    counts = [a[AUX + "share"].astype(np.float64) * n for a, n in uploads]
    summed = sum(c[:, None] * a[AUX + "means"].astype(np.float64) for c, (a, _) in zip(counts, uploads))
    per_class = sum(counts)
    seen = per_class > 0
    plain[seen] = summed[seen] / per_class[seen, None]
    return plain


def _complete_fedavg(common: dict, lda: bool):
    """FedAvg whose arrays stay one whole network (global_model.pt): the keys no client sends (its
    personal parts) keep the values last sent; with ``lda``, the head becomes the LDA classifier of
    the averaged statistics (pFedFDA's global model)."""
    from flwr.app import Array


    class CompleteFedAvg(CustomStrategy):
        def aggregate_train(self, server_round, replies):
            replies = list(replies)
            arrays, metrics = super().aggregate_train(server_round, replies)
            if arrays is None:
                return arrays, metrics
            for key in self.sent.keys() - set(arrays.keys()):
                arrays[key] = Array(self.sent[key])
            if lda and AUX + "means" in arrays:
                uploads = list(self._by_node(replies).values())
                if all(AUX + "share" in a for a, _ in uploads):
                    arrays[AUX + "means"] = Array(pooled_class_means(uploads).astype(np.float32))
                weight, bias = lda_head(*(torch.from_numpy(arrays[AUX + k].numpy()) for k in ("means", "cov", "prior")))
                arrays["head.weight"] = Array(weight.float().numpy())
                arrays["head.bias"] = Array(bias.float().numpy())
            return arrays, metrics

    return CompleteFedAvg(**common)


def complete_server(*, hp: dict[str, Any], common: dict[str, Any], plan: dict[str, Any], model: nn.Module,
                    param_keys: set[str], buffer_keys: set[str]) -> Strategy:
    return _complete_fedavg(common, lda=False)


def fda_server(*, hp: dict[str, Any], common: dict[str, Any], plan: dict[str, Any], model: nn.Module,
               param_keys: set[str], buffer_keys: set[str]) -> Strategy:
    return _complete_fedavg(common, lda=True)


CLIENTS: dict[str, type[ClientAlgorithm]] = {"FedEM": FedEM, "kNN-Per": KNNPer, "FLUTE": FLUTE, "pFedFDA": PFedFDA}
MODELS: dict[str, type[nn.Module]] = {"FedEM": MixtureNet, "kNN-Per": KNNPerNet}
INITIAL = {"pFedFDA": with_aux(fda_initial)}
SERVERS = {"FedEM": complete_server, "kNN-Per": complete_server, "FLUTE": complete_server, "pFedFDA": fda_server}
