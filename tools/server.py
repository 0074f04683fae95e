"""Server-side tools: read the task, query the FL algorithm registry, read the clients' statistics.

The server workspace is ``<env>/server`` (``tasks/<task_id>.json``). Client statistics come from
each client workspace's ``work/stats.json`` only (see :mod:`tools.stats`); the client workspaces
are given when the tools are built, by default the sibling ``<env>/clients/*`` folders. Launching
and monitoring training belong to ``fl/`` and are added there.
"""

from __future__ import annotations

import json
from itertools import combinations
from pathlib import Path

import numpy as np

from tools.sandbox import ToolError, Workspace
from tools.stats import STATS_NAME, ClientStatistics

MAX_STATS_BYTES = 200_000


def read_task(ws: Workspace, task_id: str | None = None, guidance: str | None = None) -> dict:
    """The user's request for one task, or the list of tasks when no id is given."""
    folder = ws.resolve("tasks")
    available = sorted(p.stem for p in folder.glob("*.json") if p.is_file() and not p.is_symlink())
    if not task_id:
        return {"tasks": available, "note": "call read_task with one of these task_id values"}
    if "/" in task_id or "\\" in task_id or task_id.startswith("."):
        raise ToolError("task_id is a name such as 'xray-pneumonia', not a path")
    path = ws.resolve(f"tasks/{task_id.removesuffix('.json')}.json", must_exist=False)
    if not path.is_file():
        raise ToolError(f"no task {task_id!r}; available: {available}")
    data = json.loads(path.read_text("utf-8"))
    requests = data.get("request", {})
    if guidance in requests:
        return {"task_id": data.get("task_id"), "environment": data.get("environment"), "request": requests[guidance]}
    return {"task_id": data.get("task_id"), "environment": data.get("environment"), "request": requests}


def query_registry(ws: Workspace, category: str | None = None, cue: str | None = None, name: str | None = None,
                   executable_only: bool = False) -> dict:
    """Algorithms of the registry matching a category and/or cue, or one algorithm by name."""
    from fl.registry import Category, Cue, load_registry

    registry = load_registry()
    if name:
        try:
            return registry.get(name).model_dump(mode="json")
        except ValueError as exc:
            raise ToolError(str(exc)[:600]) from None
    cats, cues = [c.value for c in Category], [c.value for c in Cue]
    if category and category not in cats:
        raise ToolError(f"unknown category {category!r}; choose from {cats}")
    if cue and cue not in cues:
        raise ToolError(f"unknown cue {cue!r}; choose from {cues}")
    found = registry.query(category=category, cue=cue, executable=True if executable_only else None)
    rows = [{"name": a.name, "category": a.category.value, "cues": [c.value for c in a.cues],
             "choose_when": a.choose_when[:140], "executable": a.executable} for a in found]
    out = {"filters": {"category": category, "cue": cue, "executable_only": executable_only},
           "count": len(rows), "algorithms": rows,
           "note": "query with name=<algorithm> for its key idea and hyperparameters"}
    if not rows or not (category or cue):
        out |= {"categories": cats, "cues": cues}
    if len(json.dumps(out)) > 4500:  # the unfiltered list: names and cues only
        out["algorithms"] = [{k: r[k] for k in ("name", "category", "cues")} for r in rows]
    return out


def _jsd(p: np.ndarray, q: np.ndarray) -> float:
    m = (p + q) / 2

    def kl(a: np.ndarray, b: np.ndarray) -> float:
        mask = a > 0
        return float((a[mask] * np.log2(a[mask] / b[mask])).sum())

    return 0.5 * kl(p, m) + 0.5 * kl(q, m)


def load_client_stats(folder: Path) -> ClientStatistics:
    """Validate one client's published statistics (a regular file inside its work folder)."""
    path = folder / STATS_NAME
    if path.is_symlink() or not path.is_file():
        raise ToolError("no statistics published yet (report_dataset_statistics writes them)")
    if not path.resolve().is_relative_to(folder.resolve()) or path.stat().st_size > MAX_STATS_BYTES:
        raise ToolError("statistics file refused (outside the workspace or too large)")
    return ClientStatistics.model_validate_json(path.read_text("utf-8"))


def read_client_statistics(clients: dict[str, Path], hospitals: list[str] | None = None) -> dict:
    """Each client's published statistics plus cross-client label and intensity differences."""
    wanted = hospitals or sorted(clients)
    unknown = [h for h in wanted if h not in clients]
    if unknown:
        raise ToolError(f"unknown hospitals {unknown}; known: {sorted(clients)}")
    stats: dict[str, ClientStatistics] = {}
    missing: dict[str, str] = {}
    for h in wanted:
        try:
            stats[h] = load_client_stats(clients[h])
        except ToolError as exc:
            missing[h] = str(exc)
        except ValueError as exc:
            missing[h] = f"invalid statistics file ({str(exc)[:120]})"
    out: dict = {"clients": {h: s.model_dump(exclude={"hospital"}) for h, s in stats.items()}}
    if missing:
        out["not_available"] = missing
    if len(stats) >= 2:
        classes = sorted({c for s in stats.values() for c in s.classes})
        dist = {h: np.array([s.classes.get(c, 0) for c in classes], float) for h, s in stats.items()}
        dist = {h: d / d.sum() if d.sum() else d for h, d in dist.items()}
        jsd = {f"{a}~{b}": round(_jsd(dist[a], dist[b]), 3) for a, b in combinations(sorted(dist), 2)}
        means = np.array([s.intensity_mean for s in stats.values()])
        out["across_clients"] = {
            "class_proportions": {h: dict(zip(classes, np.round(d, 3).tolist())) for h, d in dist.items()},
            "label_distribution_js_divergence": {"max": max(jsd.values()), "pairs": jsd},
            "intensity_mean_range_per_channel": np.round(means.max(0) - means.min(0), 4).tolist(),
            "images_per_client": {h: s.total_images for h, s in stats.items()},
            "note": "JS divergence 0 = identical label mix, 1 = disjoint; large intensity ranges suggest feature shift",
        }
    return out
