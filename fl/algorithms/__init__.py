"""Client-side logic of every executable algorithm, by registry name."""

from __future__ import annotations


def client_algorithm(name: str):
    """The ClientAlgorithm class for a registry name (imports torch)."""
    from fl.algorithms import generalisation, personalised, traditional

    table = {**traditional.CLIENTS, **personalised.CLIENTS, **generalisation.CLIENTS}
    if name not in table:
        raise ValueError(f"algorithm {name!r} has no client implementation")
    return table[name]


EXECUTABLE = (
    "FedAvg",
    "FedAvgM",
    "FedProx",
    "FedOpt",
    "SCAFFOLD",
    "MOON",
    "FedDyn",
    "FedLC",
    "FedBN",
    "FedPer",
    "FedRep",
    "LG-FedAvg",
    "Ditto",
    "APFL",
    "FedBABU",
    "FedRoD",
    "FedProto",
    "Local-Only",
    "FedSR",
)
