"""Personalisation the server computes: a hypernetwork that generates each client's model (pFedHN) or
its layer-wise aggregation weights (pFedLA), and clustering of clients by update direction (CFL)."""

CLIENTS: dict = {}
SERVERS: dict = {}
