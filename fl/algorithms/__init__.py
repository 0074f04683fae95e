"""Every executable algorithm, by registry name: its client and, where it needs them, its server,
network and round-1 arrays.

An algorithm module (any module of this package but ``base`` and ``server_base``, found by
:data:`MODULES`) exports ``CLIENTS`` (registry name -> ClientAlgorithm class) and may export
``SERVERS`` (name -> :class:`fl.algorithms.server_base.ServerFactory`), ``MODELS`` (name -> network
class with SplitNet's constructor, see ``fl.models.build_model``) and ``INITIAL`` (name ->
:class:`fl.algorithms.server_base.InitialArrays`). Adding an algorithm touches its module, the
registry (``fl/registry.json``) and, if a task should accept it, the task table; a module outside
the package is added with ``FEDAGENTBENCH_ALGORITHM_MODULES=my.module``.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

#: modules of this package that hold no algorithm
_SHARED = ("base", "server_base")
#: one module per family of algorithms (fl/algorithms/<module>.py), found on disk
MODULES = tuple(sorted(m.name for m in pkgutil.iter_modules([str(Path(__file__).parent)])
                       if m.name not in _SHARED and not m.name.startswith("_")))
#: modules outside this package that add algorithms the same way: a comma-separated list of module
#: paths (environment variables reach the Flower/Ray worker processes, where the clients run)
EXTRA_MODULES_ENV = "FEDAGENTBENCH_ALGORITHM_MODULES"


def _modules() -> list[ModuleType]:
    extra = [m.strip() for m in os.environ.get(EXTRA_MODULES_ENV, "").split(",") if m.strip()]
    return [importlib.import_module(name) for name in [f"fl.algorithms.{name}" for name in MODULES] + extra]


def _table(attribute: str) -> dict[str, Any]:
    table: dict[str, Any] = {}
    for module in _modules():
        for name, value in getattr(module, attribute, {}).items():
            if name in table and table[name] is not value:
                raise ValueError(f"algorithm {name!r} declares {attribute} in two modules")
            table[name] = value
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
    """The algorithm's own strategy factory, if it has one (else it is served by FedAvg)."""
    return _table("SERVERS").get(name)


def model_class(name: str) -> type | None:
    """The network class an algorithm needs instead of the plain SplitNet, if any."""
    return _table("MODELS").get(name)


def initial_function(name: str) -> Callable[..., dict] | None:
    """Function(model, n_classes, weights) -> round-1 arrays, if the algorithm sends other than its weights."""
    return _table("INITIAL").get(name)
