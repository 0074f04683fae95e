"""Personalised aggregation by similarity: the server builds each client its own model from the
clients whose models or data look alike (pFedSim, FedFomo, FedAP, FedPAC)."""

CLIENTS: dict = {}
SERVERS: dict = {}
