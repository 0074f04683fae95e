"""Personalisation through what each client represents: mixtures of models (FedEM), a local memory
(kNN-Per), a shared representation (FLUTE), a local feature distribution (pFedFDA)."""

CLIENTS: dict = {}
