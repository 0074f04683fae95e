"""Client-side logic of every executable algorithm, by registry name."""

from __future__ import annotations


def _clients() -> dict:
    from fl.algorithms import generalisation, personalised, traditional

    return {**traditional.CLIENTS, **personalised.CLIENTS, **generalisation.CLIENTS}


def implemented() -> set[str]:
    """Registry names with a client implementation (the registry's ``executable`` flags must agree)."""
    return set(_clients())


def client_algorithm(name: str):
    """The ClientAlgorithm class for a registry name (imports torch)."""
    table = _clients()
    if name not in table:
        raise ValueError(f"algorithm {name!r} has no client implementation")
    return table[name]

