"""Client-side logic of every executable algorithm, by registry name, and the hooks an algorithm
module may add for the server and the network.

Each module in ``MODULES`` exports ``CLIENTS`` (registry name -> ClientAlgorithm class) and may
export ``SERVERS`` (name -> factory of its Flower strategy, see ``fl.strategies.build_strategy``),
``MODELS`` (name -> network class with SplitNet's constructor, see ``fl.models.build_model``) and
``INITIAL`` (name -> function(model, n_classes) giving the extra arrays of round 1).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from types import ModuleType
from typing import Any

#: one module per family of algorithms (fl/algorithms/<module>.py)
MODULES = ("traditional", "personalised", "generalisation", "server_personalised", "client_personalised",
           "server_assisted", "representation_personalised", "similarity_personalised")  # fmt: skip


def _modules() -> list[ModuleType]:
    return [importlib.import_module(f"fl.algorithms.{name}") for name in MODULES]


def _table(attribute: str) -> dict[str, Any]:
    table: dict[str, Any] = {}
    for module in _modules():
        table.update(getattr(module, attribute, {}))
    return table


def implemented() -> set[str]:
    """Registry names with a client implementation (the registry's ``executable`` flags must agree)."""
    return set(_table("CLIENTS"))


def client_algorithm(name: str):
    """The ClientAlgorithm class for a registry name (imports torch)."""
    table = _table("CLIENTS")
    if name not in table:
        raise ValueError(f"algorithm {name!r} has no client implementation")
    return table[name]


def server_factory(name: str) -> Callable[..., Any] | None:
    """The module's own strategy factory for ``name``, if it has one (else fl.strategies decides)."""
    return _table("SERVERS").get(name)


def model_class(name: str) -> type | None:
    """The network class an algorithm needs instead of the plain SplitNet, if any."""
    return _table("MODELS").get(name)


def initial_extras(name: str) -> Callable[..., dict] | None:
    """Function(model, n_classes) -> extra round-1 arrays (``aux.``-prefixed), if the algorithm has one."""
    return _table("INITIAL").get(name)
