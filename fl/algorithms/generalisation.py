"""Client side of the domain-generalisation algorithms (a model meant for unseen hospitals)."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from fl.algorithms.base import ClientAlgorithm


class FedSR(ClientAlgorithm):
    """Nguyen et al. 2022: a probabilistic representation z ~ N(mu(x), sigma(x)) with an L2 penalty
    on z and a conditional-mutual-information bound KL(p(z|x) || r(z|y)), r learned per class.
    Everything, r included, is averaged as in FedAvg."""

    def loss(self, model, x, y):
        mu, sigma = model.z_distribution(x)
        z = mu + sigma * torch.randn_like(sigma)
        loss = F.cross_entropy(model.head(z), y)
        loss = loss + float(self.hp.get("l2r_coeff", 0.01)) * z.norm(dim=1).mean()
        r_mu, r_sigma = model.r_mu[y], F.softplus(model.r_sigma)[y]
        cmi = torch.log(r_sigma) - torch.log(sigma) + (sigma**2 + (mu - r_mu) ** 2) / (2 * r_sigma**2) - 0.5
        return loss + float(self.hp.get("cmi_coeff", 5e-4)) * cmi.sum(dim=1).mean()


CLIENTS: dict[str, type[ClientAlgorithm]] = {"FedSR": FedSR}
