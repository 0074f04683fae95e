"""Reports from a results store: terminal table, Markdown leaderboard, CSV, JSON and HTML with plots.

Overall score as the paper computes it: sub-task passes over (7 sub-tasks x runs), in per cent
(32 of 35 is 91.43). Also mean +- standard error across runs, and pass^k (every one of k runs
passes). The paper's published X-ray numbers are shown beside ours, marked as theirs.
"""

from __future__ import annotations

import base64
import io
import json
import math
from pathlib import Path
from typing import Any

from eval.store import ResultStore, RunResult

SUBTASKS = ("S1", "C1", "S2", "C2", "C3", "S3", "S4")

#: FedAgentBench paper, Table 15 (X-ray, overall %, fine-grained / goal-oriented): THEIR numbers
PAPER_XRAY: dict[str, tuple[float, float]] = {
    "gpt-4.1": (100.00, 100.00), "o4-mini": (91.43, 85.71), "gpt-4.1-mini": (88.57, 77.14),
    "gpt-4o-mini": (77.14, 74.29), "gpt-4-turbo": (71.43, 77.14), "gpt-4": (71.43, 65.71),
    "gpt-4o": (71.43, 68.57), "o3-mini": (71.42, 74.29), "claude-3.7-sonnet": (57.14, 57.14),
    "gpt-3.5-turbo": (25.71, 34.29),
}


def overall_score(passes: int, runs: int, subtasks: int = len(SUBTASKS)) -> float:
    """The paper's overall score: passes / (sub-tasks x runs) x 100, rounded to two decimals."""
    if runs <= 0:
        raise ValueError("runs must be positive")
    return round(100.0 * passes / (subtasks * runs), 2)


def pass_hat_k(successes: int, n: int, k: int) -> float:
    """pass^k: the chance that k runs drawn from n all pass (C(s, k) / C(n, k))."""
    if k > n:
        return float("nan")
    return math.comb(successes, k) / math.comb(n, k)


def _mean_se(values: list[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, 0.0
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)


def summarise(results: list[RunResult]) -> list[dict[str, Any]]:
    """One row per (model, environment, guidance, mode): per-sub-task passes, overall, tokens, time."""
    groups: dict[tuple, list[RunResult]] = {}
    for r in results:
        groups.setdefault((r.key.model, r.key.environment, r.key.guidance, r.key.mode), []).append(r)
    rows = []
    for (model, env, guidance, mode), rs in sorted(groups.items()):
        per_run_scores = [100.0 * sum(r.subtasks.get(s, False) for s in SUBTASKS) / len(SUBTASKS) for r in rs]
        mean, se = _mean_se(per_run_scores)
        row: dict[str, Any] = {"model": model, "environment": env, "guidance": guidance, "mode": mode,
                               "runs": len(rs), "tasks": len({r.key.task for r in rs})}
        for s in SUBTASKS:
            row[s] = sum(r.subtasks.get(s, False) for r in rs)
        row["passes"] = sum(row[s] for s in SUBTASKS)
        row["overall"] = overall_score(row["passes"], len(rs))
        row["overall_se"] = round(se, 2)
        row["mean_run_score"] = round(mean, 2)
        row["tokens"] = sum(r.usage.get("input_tokens", 0) + r.usage.get("output_tokens", 0) for r in rs)
        row["wall_seconds"] = round(sum(r.wall_seconds for r in rs), 1)
        row["privacy_violations"] = sum(r.privacy_violations for r in rs)
        row["failed_runs"] = sum(1 for r in rs if r.failed)
        by_task: dict[str, list[bool]] = {}
        for r in rs:
            by_task.setdefault(r.key.task, []).append(all(r.subtasks.get(s, False) for s in SUBTASKS))
        k = min(len(v) for v in by_task.values())
        row["pass^k"] = round(sum(pass_hat_k(sum(v), len(v), k) for v in by_task.values()) / len(by_task), 4)
        row["k"] = k
        rows.append(row)
    return rows


def leaderboard(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (model, guidance, mode), over all environments."""
    agg: dict[tuple, dict[str, Any]] = {}
    for row in rows:
        key = (row["model"], row["guidance"], row["mode"])
        a = agg.setdefault(key, {"model": row["model"], "guidance": row["guidance"], "mode": row["mode"], "runs": 0,
                                 "passes": 0, "tokens": 0, "wall_seconds": 0.0, **{s: 0 for s in SUBTASKS}})
        for field in ("runs", "passes", "tokens", "wall_seconds", *SUBTASKS):
            a[field] += row[field]
    out = []
    for a in agg.values():
        a["overall"] = overall_score(a["passes"], a["runs"])
        paper = PAPER_XRAY.get(a["model"])
        a["paper_xray_overall"] = (paper[0] if a["guidance"] == "fine" else paper[1]) if paper else None
        out.append(a)
    return sorted(out, key=lambda a: -a["overall"])


def write_reports(folder: str | Path) -> dict[str, Path]:
    """Write leaderboard.md, summary.csv, summary.json and report.html into ``folder``."""
    import pandas as pd

    from eval.scoring import GRADER_VERSION

    folder = Path(folder)
    results = ResultStore(folder).load(GRADER_VERSION)
    if not results:
        raise FileNotFoundError(f"no results of grader version {GRADER_VERSION} in {folder}")
    rows = summarise(results)
    board = leaderboard(rows)
    paths = {"csv": folder / "summary.csv", "json": folder / "summary.json", "markdown": folder / "leaderboard.md",
             "html": folder / "report.html"}
    pd.DataFrame(rows).to_csv(paths["csv"], index=False)
    paths["json"].write_text(json.dumps({"grader_version": GRADER_VERSION, "rows": rows, "leaderboard": board},
                                        indent=1) + "\n", "utf-8")
    paths["markdown"].write_text(_markdown(board, rows), "utf-8")
    paths["html"].write_text(_html(board, rows, results), "utf-8")
    return paths


def _markdown(board: list[dict], rows: list[dict]) -> str:
    lines = ["# FedAgentBench leaderboard", "",
             "Overall = sub-task passes / (7 x runs) x 100. `paper (X-ray)` is the FedAgentBench paper's published "
             "X-ray score for the same model and guidance (their numbers, their environments).", "",
             "| model | guidance | mode | runs | " + " | ".join(SUBTASKS) + " | overall | paper (X-ray) |",
             "|---|---|---|---|" + "---|" * len(SUBTASKS) + "---|---|"]
    for a in board:
        paper = f"{a['paper_xray_overall']:.2f}" if a["paper_xray_overall"] is not None else "-"
        lines.append(f"| {a['model']} | {a['guidance']} | {a['mode']} | {a['runs']} | "
                     + " | ".join(f"{a[s]}/{a['runs']}" for s in SUBTASKS) + f" | {a['overall']:.2f} | {paper} |")
    lines += ["", "## Per environment", "", "| model | environment | guidance | mode | runs | overall | +- SE | pass^k |",
              "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['environment']} | {r['guidance']} | {r['mode']} | {r['runs']} | "
                     f"{r['overall']:.2f} | {r['overall_se']:.2f} | {r['pass^k']:.2f} (k={r['k']}) |")
    return "\n".join(lines) + "\n"


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode()


def _html(board: list[dict], rows: list[dict], results: list[RunResult]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    figs = []
    models = sorted({r.key.model for r in results})
    fig, ax = plt.subplots(figsize=(7, 3))
    width = 0.8 / max(1, len(models))
    for i, model in enumerate(models):
        rs = [r for r in results if r.key.model == model]
        rates = [100 * sum(r.subtasks.get(s, False) for r in rs) / len(rs) for s in SUBTASKS]
        ax.bar(np.arange(len(SUBTASKS)) + i * width, rates, width, label=model)
    ax.set_xticks(np.arange(len(SUBTASKS)) + width * (len(models) - 1) / 2, SUBTASKS)
    ax.set_ylabel("pass rate (%)")
    ax.set_title("per-phase pass rate")
    ax.legend(fontsize=7)
    figs.append(("Per-phase pass rate", _png(fig)))
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5, 3))
    for model in models:
        vals = [next((b["overall"] for b in board if b["model"] == model and b["guidance"] == g), np.nan)
                for g in ("fine", "goal")]
        ax.plot(["fine-grained", "goal-oriented"], vals, marker="o", label=model)
    ax.set_ylabel("overall (%)")
    ax.set_title("fine-grained vs goal-oriented")
    ax.legend(fontsize=7)
    figs.append(("Guidance styles", _png(fig)))
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5, 3))
    for b in board:
        ax.scatter(b["tokens"] / max(1, b["runs"]), b["overall"], label=f"{b['model']} ({b['guidance']})")
    ax.set_xlabel("tokens per run")
    ax.set_ylabel("overall (%)")
    ax.set_title("tokens vs score")
    ax.legend(fontsize=6)
    figs.append(("Tokens vs score", _png(fig)))
    plt.close(fig)

    envs = sorted({r["environment"] for r in rows})
    labels = sorted({(r["model"], r["guidance"]) for r in rows})
    grid = np.full((len(labels), len(envs)), np.nan)
    for r in rows:
        i, j = labels.index((r["model"], r["guidance"])), envs.index(r["environment"])
        grid[i, j] = r["overall"] if np.isnan(grid[i, j]) else (grid[i, j] + r["overall"]) / 2
    fig, ax = plt.subplots(figsize=(1 + 1.1 * len(envs), 0.8 + 0.45 * len(labels)))
    im = ax.imshow(grid, vmin=0, vmax=100, cmap="viridis")
    ax.set_xticks(range(len(envs)), envs, rotation=30, ha="right")
    ax.set_yticks(range(len(labels)), [f"{m} ({g})" for m, g in labels])
    for i in range(len(labels)):
        for j in range(len(envs)):
            if not np.isnan(grid[i, j]):
                ax.text(j, i, f"{grid[i, j]:.0f}", ha="center", va="center", color="w", fontsize=8)
    fig.colorbar(im, ax=ax, label="overall (%)")
    ax.set_title("per-environment overall score")
    figs.append(("Per environment", _png(fig)))
    plt.close(fig)

    table = "".join(
        f"<tr><td>{b['model']}</td><td>{b['guidance']}</td><td>{b['mode']}</td><td>{b['runs']}</td>"
        + "".join(f"<td>{b[s]}/{b['runs']}</td>" for s in SUBTASKS)
        + f"<td><b>{b['overall']:.2f}</b></td><td class=paper>"
        + (f"{b['paper_xray_overall']:.2f}" if b["paper_xray_overall"] is not None else "-") + "</td></tr>"
        for b in board)
    images = "".join(f"<h2>{title}</h2><img src='data:image/png;base64,{data}'>" for title, data in figs)
    return ("<!doctype html><html><head><meta charset=utf-8><title>FedAgentBench report</title><style>"
            "body{font-family:sans-serif;margin:2em}td,th{border:1px solid #ccc;padding:3px 8px}"
            "table{border-collapse:collapse}.paper{color:#a33;font-style:italic}</style></head><body>"
            "<h1>FedAgentBench report</h1><p>Overall = passes / (7 x runs) x 100. The red italic column is the "
            "<b>paper's published X-ray number</b> for the same model and guidance (their runs, not ours).</p>"
            "<table><tr><th>model</th><th>guidance</th><th>mode</th><th>runs</th>"
            + "".join(f"<th>{s}</th>" for s in SUBTASKS)
            + f"<th>overall</th><th class=paper>paper X-ray (theirs)</th></tr>{table}</table>{images}</body></html>")
