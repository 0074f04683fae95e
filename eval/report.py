"""Reports from a results store: terminal table, Markdown leaderboard, CSV, JSON and HTML with plots.

The statistics, and what each one measures:

* **overall**: the mean over task instances (environment x task x guidance x mode) of each
  instance's mean run score, a run scoring sub-tasks passed / 7 x 100. With the same number of runs
  everywhere this is the paper's passes / (7 x runs) x 100 (32 of 35 is 91.43).
* **SE (run-to-run)**: the standard error of that mean from repeated runs of the same task: the
  within-instance variance of the run scores, pooled over instances. Variation between different
  tasks is not run-to-run noise and never enters it; with one run per instance it is "n/a (1 run)".
* **95 % CI**: a percentile bootstrap over task instances (resampled with replacement, a fixed RNG
  seed), i.e. how much the score depends on which tasks were drawn. Its half-width is the noise
  floor: smaller differences between two rows are noise.
* **pass^k**: with k = the runs per instance, the share of instances whose k runs all pass (per
  sub-task, and "all 7 passed"), by the unbiased estimator C(s, k) / C(n, k).

The paper's published X-ray numbers are shown beside ours, marked as theirs.

Runs that ended on an infrastructure error (``failed``: the provider's retries ran out, the
harness broke) are not scores: they are left out of every statistic, listed apart, and run again
by the next ``bench``. Every failed sub-task of a scored run carries a failure class
(:mod:`eval.taxonomy`), tabulated per model and sub-task beside the scores.
"""

from __future__ import annotations

import base64
import io
import json
import math
from pathlib import Path
from typing import Any

from eval.scoring import SUBTASKS
from eval.store import ResultStore, RunResult

BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0
CI_LEVEL = 0.95

#: FedAgentBench paper, Table 15 (X-ray, overall %, fine-grained / goal-oriented): THEIR numbers
PAPER_XRAY: dict[str, tuple[float, float]] = {
    "gpt-4.1": (100.00, 100.00), "o4-mini": (91.43, 85.71), "gpt-4.1-mini": (88.57, 77.14),
    "gpt-4o-mini": (77.14, 74.29), "gpt-4-turbo": (71.43, 77.14), "gpt-4": (71.43, 65.71),
    "gpt-4o": (71.43, 68.57), "o3-mini": (71.42, 74.29), "claude-3.7-sonnet": (57.14, 57.14),
    "gpt-3.5-turbo": (25.71, 34.29),
}

STATISTICS_NOTE = (
    "Overall = mean over task instances (environment x task x guidance x mode) of each instance's mean run "
    "score (sub-tasks passed / 7 x 100). SE = standard error of that mean from run-to-run variation (the "
    "within-instance variance of repeated runs of the same task, pooled); n/a with 1 run per instance. "
    f"95 % CI = percentile bootstrap over task instances ({BOOTSTRAP_RESAMPLES} resamples, seed {BOOTSTRAP_SEED}). "
    "pass^k = share of instances whose k runs all pass, k = runs per instance (C(s,k)/C(n,k)).")


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


def run_score(result: RunResult) -> float:
    """One run's score: sub-tasks passed / 7 x 100."""
    return 100.0 * sum(result.subtasks.get(s, False) for s in SUBTASKS) / len(SUBTASKS)


def instance_key(result: RunResult) -> tuple:
    """A task instance: one environment (of one seed) x task x guidance x mode, for one model."""
    k = result.key
    return (k.model, k.environment, result.env_seed, k.task, k.guidance, k.mode)


def group_instances(results: list[RunResult]) -> dict[tuple, list[RunResult]]:
    """Task instances (model, environment, seed, task, guidance, mode) and their repeated runs, by run number."""
    out: dict[tuple, list[RunResult]] = {}
    for r in results:
        out.setdefault(instance_key(r), []).append(r)
    return {key: sorted(rs, key=lambda r: r.key.run) for key, rs in sorted(out.items(), key=lambda kv: str(kv[0]))}


def run_to_run_se(instances: list[list[float]]) -> tuple[float | None, float | None]:
    """(SE of the mean of instance means, pooled run-to-run SD) from repeated runs of each instance.

    The pooled within-instance variance s^2 = sum((x - instance mean)^2) / sum(n_i - 1); the mean of
    instance means has variance s^2 * sum(1 / n_i) / I^2. (None, None) when no instance has 2 runs."""
    dof = sum(len(v) - 1 for v in instances)
    if not instances or dof <= 0:
        return None, None
    squares = sum(sum((x - sum(v) / len(v)) ** 2 for x in v) for v in instances)
    pooled = squares / dof
    se = math.sqrt(pooled * sum(1.0 / len(v) for v in instances)) / len(instances)
    return se, math.sqrt(pooled)


def bootstrap_ci(values: list[float], resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED,
                 level: float = CI_LEVEL) -> tuple[float, float] | None:
    """Percentile bootstrap CI of the mean of ``values`` (instances resampled with replacement, fixed
    seed: the same input gives the same interval). None with fewer than 2 values."""
    import numpy as np

    if len(values) < 2:
        return None
    data = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, len(data), size=(resamples, len(data)))].mean(axis=1)
    tail = 100.0 * (1.0 - level) / 2
    low, high = np.percentile(means, [tail, 100.0 - tail])
    return float(low), float(high)


def group_statistics(results: list[RunResult]) -> dict[str, Any]:
    """Score, run-to-run SE, bootstrap CI over instances and pass^k of one group of runs."""
    instances = list(group_instances(results).values())
    scores = [[run_score(r) for r in rs] for rs in instances]
    means = [sum(v) / len(v) for v in scores]
    overall = sum(means) / len(means)
    se, sd = run_to_run_se(scores)
    ci = bootstrap_ci(means)
    counts = [len(rs) for rs in instances]
    k = min(counts)
    stats: dict[str, Any] = {
        "instances": len(instances), "runs": len(results),
        "runs_per_instance": str(k) if k == max(counts) else f"{k}-{max(counts)}",
        **{s: sum(r.subtasks.get(s, False) for r in results) for s in SUBTASKS},
    }
    stats["passes"] = sum(stats[s] for s in SUBTASKS)
    stats.update({
        "overall": round(overall, 2),
        "se_runs": None if se is None else round(se, 2),
        "run_sd": None if sd is None else round(sd, 2),
        "ci_low": None if ci is None else round(ci[0], 2),
        "ci_high": None if ci is None else round(ci[1], 2),
        "ci_halfwidth": None if ci is None else round((ci[1] - ci[0]) / 2, 2),
        "k": k,
    })

    def pass_k(passed: list[list[bool]]) -> float:
        return round(sum(pass_hat_k(sum(v), len(v), k) for v in passed) / len(passed), 4)

    stats["pass^k"] = pass_k([[all(r.subtasks.get(s, False) for s in SUBTASKS) for r in rs] for rs in instances])
    for s in SUBTASKS:
        stats[f"pass^k_{s}"] = pass_k([[r.subtasks.get(s, False) for r in rs] for rs in instances])
    stats["tokens"] = sum(r.usage.get("input_tokens", 0) + r.usage.get("output_tokens", 0) for r in results)
    stats["wall_seconds"] = round(sum(r.wall_seconds for r in results), 1)
    stats.update(cost_and_context(results))
    stats["privacy_violations"] = sum(r.privacy_violations for r in results)
    stats["failed_runs"] = sum(1 for r in results if r.failed)
    stats.update(outcome_statistics(results))
    temperatures = sorted({r.temperature for r in results if r.temperature is not None})
    stats["temperature"] = ",".join(f"{t:g}" for t in temperatures) or "unrecorded"
    return stats


def outcome_statistics(results: list[RunResult]) -> dict[str, Any]:
    """Mean held-out balanced accuracy and mean ratio to the oracle's (runs with no trained model
    count 0 in the ratio: nothing learned), and over how many runs each mean is taken."""
    ratios = [r.outcome["ratio"] for r in results if r.outcome and r.outcome.get("ratio") is not None]
    bas = [r.outcome["balanced_accuracy"] for r in results if r.outcome and r.outcome.get("balanced_accuracy") is not None]
    return {"outcome_ratio": round(sum(ratios) / len(ratios), 3) if ratios else None, "outcome_ratio_runs": len(ratios),
            "outcome_balanced_accuracy": round(sum(bas) / len(bas), 3) if bas else None, "outcome_runs": len(bas)}


def format_outcome(row: dict[str, Any]) -> str:
    if row.get("outcome_ratio") is None:
        return "-"
    ba = row.get("outcome_balanced_accuracy")
    return f"{row['outcome_ratio']:.2f}" + (f" (BA {ba:.2f})" if ba is not None else "")


def scored(results: list[RunResult]) -> list[RunResult]:
    """The runs that count: those that did not end on an infrastructure error."""
    return [r for r in results if not r.failed]


def failure_table(results: list[RunResult]) -> list[dict[str, Any]]:
    """One row per (model, failure class): how many failed sub-tasks of each kind, per sub-task.
    Infrastructure failures are counted once per run (under ``runs``), not per sub-task."""
    from eval.taxonomy import CLASSES

    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for r in results:
        if r.failed:
            row = rows.setdefault((r.key.model, "infrastructure_error"),
                                  {"model": r.key.model, "class": "infrastructure_error", "runs": 0,
                                   **{s: 0 for s in SUBTASKS}, "total": 0})
            row["runs"] += 1
            continue
        for subtask, cls in r.failures.items():
            row = rows.setdefault((r.key.model, cls), {"model": r.key.model, "class": cls, "runs": 0,
                                                       **{s: 0 for s in SUBTASKS}, "total": 0})
            if subtask in SUBTASKS:
                row[subtask] += 1
                row["total"] += 1
    order = {c: i for i, c in enumerate(CLASSES)}
    return sorted(rows.values(), key=lambda x: (x["model"], order.get(x["class"], len(order))))


def transcript_link(result: RunResult, folder: Path) -> str | None:
    """The run's transcript page, relative to ``folder`` when it lies inside it."""
    if not result.transcript:
        return None
    page = Path(result.transcript).with_suffix(".html")
    try:
        return str(page.resolve().relative_to(folder.resolve()))
    except ValueError:
        return str(page)


def summarise(results: list[RunResult]) -> list[dict[str, Any]]:
    """One row per (model, environment, guidance, mode): per-sub-task passes, statistics, tokens, time."""
    groups: dict[tuple, list[RunResult]] = {}
    for r in results:
        groups.setdefault((r.key.model, r.key.environment, r.key.guidance, r.key.mode), []).append(r)
    rows = []
    for (model, env, guidance, mode), rs in sorted(groups.items()):
        stats = group_statistics(rs)
        rows.append({"model": model, "environment": env, "guidance": guidance, "mode": mode,
                     "tasks": stats["instances"], **stats})
    return rows


def leaderboard(results: list[RunResult]) -> list[dict[str, Any]]:
    """One row per (model, guidance, mode), over all environments' task instances."""
    groups: dict[tuple, list[RunResult]] = {}
    for r in results:
        groups.setdefault((r.key.model, r.key.guidance, r.key.mode), []).append(r)
    out = []
    for (model, guidance, mode), rs in groups.items():
        a = {"model": model, "guidance": guidance, "mode": mode, **group_statistics(rs)}
        paper = PAPER_XRAY.get(model)
        a["paper_xray_overall"] = (paper[0] if guidance == "fine" else paper[1]) if paper else None
        out.append(a)
    return sorted(out, key=lambda a: (-a["overall"], a["model"], a["guidance"], a["mode"]))


def format_se(row: dict[str, Any]) -> str:
    return "n/a (1 run)" if row["se_runs"] is None else f"{row['se_runs']:.2f}"


def format_ci(row: dict[str, Any]) -> str:
    return "n/a (1 instance)" if row["ci_low"] is None else f"[{row['ci_low']:.2f}, {row['ci_high']:.2f}]"


def noise_notes(board: list[dict[str, Any]]) -> list[str]:
    """One line per leaderboard row: the noise floor its score comparisons live above."""
    lines = []
    for a in board:
        name = f"{a['model']} ({a['guidance']}, {a['mode']})"
        if a["ci_halfwidth"] is None:
            lines.append(f"{name}: one task instance, no confidence interval: no difference can be told from noise")
        else:
            lines.append(f"{name}: {a['instances']} instances x {a['runs_per_instance']} runs: differences smaller "
                         f"than the 95 % CI half-width (+-{a['ci_halfwidth']:.2f} points) are noise")
    return lines


def rerun_command(folder: Path) -> str:
    """The ``fedagentbench bench`` command that (re)fills ``folder``, from its manifest when it has one."""
    settings = (ResultStore(folder).read_manifest() or {}).get("settings") or {}
    if not settings.get("model"):
        return f"fedagentbench bench --model <MODEL> <same options as before> --out {folder}"
    parts = ["fedagentbench bench", f"--model {settings['model']}",
             f"--env {','.join(settings.get('environments') or [])}"]
    if settings.get("tasks"):
        parts.append(f"--task {','.join(settings['tasks'])}")
    parts += [f"--guidance {','.join(settings.get('guidance') or ['fine', 'goal'])}",
              f"--mode {','.join(settings.get('modes') or ['e2e'])}"]
    for name in ("runs", "scale", "seed", "temperature", "rounds", "budget"):
        if name in settings:
            parts.append(f"--{name} {settings[name]}")
    parts.append(f"--out {folder}")
    return " ".join(parts)


def load_current(folder: str | Path) -> tuple[list[RunResult], str | None]:
    """The results of the current grader version in ``folder`` and, when lines of another grader
    version were left out, a one-line warning saying so. Raises FileNotFoundError (with the fix) when
    no result of the current grader version is there."""
    from eval.scoring import GRADER_VERSION

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a results folder")
    store = ResultStore(folder)
    results = store.load(GRADER_VERSION)
    other = {v: n for v, n in sorted(store.version_counts().items()) if v != GRADER_VERSION}
    if not results and not other:
        raise FileNotFoundError(f"no results in {folder} (no {store.path.name}): run `fedagentbench bench --out {folder}`")
    if not other:
        return results, None
    lines = sum(other.values())
    found = (f"grader version {next(iter(other))}" if len(other) == 1
             else "grader versions " + ", ".join(f"{v} ({n} lines)" for v, n in other.items()))
    if not results:
        raise FileNotFoundError(
            f"{folder}: no results of the current grader (version {GRADER_VERSION}): all {lines} results lines were "
            f"scored by {found} and are not comparable. Fix: re-run `{rerun_command(folder)}` (the same --out: "
            "runs of another grader version are run again)")
    current = {r.key.text for r in results}
    older = {r.key.text for r in store.load() if r.grader_version != GRADER_VERSION}
    rerun, stale = len(older & current), len(older - current)
    warning = (f"warning: {folder}: ignored {lines} results lines scored by {found} (current grader: version "
               f"{GRADER_VERSION}); {rerun} of those runs were re-run with grader {GRADER_VERSION}"
               + (f", {stale} were not: re-run `{rerun_command(folder)}` to score them" if stale else ""))
    return results, warning


def cost_and_context(results: list[RunResult]) -> dict[str, Any]:
    """Money, time and the context window: what a run costs and what the serving stack did to it."""
    costs = [r.cost_usd for r in results]
    known = [c for c in costs if c is not None]
    windows = sorted({(r.context_window or {}).get("tokens") for r in results if r.context_window}, key=str)
    runs = max(1, len(results))
    return {
        "cost_usd": round(sum(known), 4) if known and len(known) == len(costs) else None,
        "cost_per_run_usd": round(sum(known) / runs, 4) if known and len(known) == len(costs) else None,
        "seconds_per_run": round(sum(r.wall_seconds for r in results) / runs, 1),
        "context_window": ",".join(str(w) for w in windows) or "-",
        "peak_prompt_tokens": max((int(r.usage.get("peak_prompt_tokens", 0) or 0) for r in results), default=0),
        "context_edits": sum(int(r.usage.get("context_edits", 0) or 0) for r in results),
        "context_overflows": sum(1 for r in results for c in r.failures.values() if c == "context_overflow"),
        "text_tool_calls": sum(int(r.usage.get("text_tool_calls", 0) or 0) for r in results),
        "timed_out_runs": sum(1 for r in results if r.timed_out),
    }


def format_cost(row: dict[str, Any]) -> str:
    return "unpriced" if row.get("cost_usd") is None else f"{row['cost_usd']:.4f} ({row['cost_per_run_usd']:.4f}/run)"


def write_reports(folder: str | Path) -> dict[str, Path]:
    """Write leaderboard.md, summary.csv, summary.json and report.html into ``folder``."""
    import pandas as pd

    from environments.pools import fallback_line, manifest_fallbacks
    from eval.scoring import GRADER_VERSION

    folder = Path(folder)
    everything, _ = load_current(folder)
    results = scored(everything)
    rows = summarise(results)
    board = leaderboard(results)
    failures = failure_table(everything)
    failed = [{"run": r.key.text, "thread": r.thread_id, "failed": r.failed, "transcript": transcript_link(r, folder)}
              for r in everything if r.failed]
    paths = {"csv": folder / "summary.csv", "json": folder / "summary.json", "markdown": folder / "leaderboard.md",
             "html": folder / "report.html"}
    pd.DataFrame(rows).to_csv(paths["csv"], index=False)
    paths["json"].write_text(json.dumps({
        "grader_version": GRADER_VERSION, "statistics": STATISTICS_NOTE, "noise": noise_notes(board),
        "bootstrap": {"resamples": BOOTSTRAP_RESAMPLES, "seed": BOOTSTRAP_SEED, "level": CI_LEVEL},
        "rows": rows, "leaderboard": board, "failure_classes": failures, "infrastructure_failures": failed},
        indent=1) + "\n", "utf-8")
    fallback = fallback_line(manifest_fallbacks(sorted(p.parent for p in folder.glob("envs/*/*/environment.json"))))
    paths["markdown"].write_text((f"> {fallback}\n\n" if fallback else "") + _markdown(board, rows)
                                 + _markdown_failures(failures, failed), "utf-8")
    paths["html"].write_text(_html(board, rows, results, failures, everything, folder), "utf-8")
    return paths


def _markdown_failures(failures: list[dict], failed: list[dict]) -> str:
    lines = ["", "## Why sub-tasks failed (failure classes, eval/taxonomy.py)", "",
             "| model | class | " + " | ".join(SUBTASKS) + " | total | runs |",
             "|---|---|" + "---|" * len(SUBTASKS) + "---|---|"]
    lines += [f"| {f['model']} | {f['class']} | " + " | ".join(str(f[s]) for s in SUBTASKS)
              + f" | {f['total']} | {f['runs'] or ''} |" for f in failures]
    if failed:
        heading = f"## {len(failed)} runs failed on infrastructure errors (not scored; the next bench runs them again)"
        lines += ["", heading, ""]
        lines += [f"- `{f['run']}`: {f['failed']}" + (f" ([transcript]({f['transcript']}))" if f["transcript"] else "")
                  for f in failed]
    return "\n".join(lines) + "\n"


def _markdown(board: list[dict], rows: list[dict]) -> str:
    lines = ["# FedAgentBench leaderboard", "", STATISTICS_NOTE + " `paper (X-ray)` is the FedAgentBench paper's "
             "published X-ray score for the same model and guidance (their numbers, their environments).", "",
             *[f"- {note}" for note in noise_notes(board)], "",
             "| model | guidance | mode | temperature | instances | runs/instance | " + " | ".join(SUBTASKS)
             + " | overall | SE (run-to-run) | 95 % CI (instances) | pass^k (all 7) | outcome ÷ oracle | paper (X-ray) |",
             "|---|---|---|---|---|---|" + "---|" * len(SUBTASKS) + "---|---|---|---|---|---|"]
    for a in board:
        paper = f"{a['paper_xray_overall']:.2f}" if a["paper_xray_overall"] is not None else "-"
        lines.append(f"| {a['model']} | {a['guidance']} | {a['mode']} | {a['temperature']} | {a['instances']} | "
                     f"{a['runs_per_instance']} | " + " | ".join(f"{a[s]}/{a['runs']}" for s in SUBTASKS)
                     + f" | {a['overall']:.2f} | {format_se(a)} | {format_ci(a)} | {a['pass^k']:.2f} (k={a['k']}) "
                     f"| {format_outcome(a)} | {paper} |")
    lines += ["", "## pass^k per sub-task (k = runs per instance)", "",
              "| model | guidance | mode | k | " + " | ".join(SUBTASKS) + " | all 7 |",
              "|---|---|---|---|" + "---|" * len(SUBTASKS) + "---|"]
    for a in board:
        lines.append(f"| {a['model']} | {a['guidance']} | {a['mode']} | {a['k']} | "
                     + " | ".join(f"{a[f'pass^k_{s}']:.2f}" for s in SUBTASKS) + f" | {a['pass^k']:.2f} |")
    lines += ["", "## Time, cost and context", "",
              ("USD at the list prices of agents/model_prices.json (self-hosted: 0); window: the context window the "
               "requests used; overflows: sub-tasks failed as context_overflow; text calls: tool calls the model "
               "wrote as text (the serving stack had no tool parser)."), "",
              ("| model | guidance | mode | cost USD | seconds/run | window | peak prompt | context edits | overflows "
               "| text calls | timed-out runs |"), "|---|---|---|---|---|---|---|---|---|---|---|"]
    for a in board:
        lines.append(f"| {a['model']} | {a['guidance']} | {a['mode']} | {format_cost(a)} | {a['seconds_per_run']} | "
                     f"{a['context_window']} | {a['peak_prompt_tokens']} | {a['context_edits']} | "
                     f"{a['context_overflows']} | {a['text_tool_calls']} | {a['timed_out_runs']} |")
    lines += ["", "## Per environment", "",
              "| model | environment | guidance | mode | instances | runs | overall | SE (run-to-run) | pass^k |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['environment']} | {r['guidance']} | {r['mode']} | {r['instances']} | "
                     f"{r['runs']} | {r['overall']:.2f} | {format_se(r)} | {r['pass^k']:.2f} (k={r['k']}) |")
    return "\n".join(lines) + "\n"


def _png(fig) -> str:
    """The figure as base64 PNG (for an offline page); the figure is closed."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _html(board: list[dict], rows: list[dict], results: list[RunResult], failures: list[dict],
          everything: list[RunResult], folder: Path) -> str:
    import matplotlib

    matplotlib.use("Agg")
    from html import escape

    import matplotlib.pyplot as plt
    import numpy as np

    figs = []
    if results:  # every run may have failed on infrastructure: no scores, no plots
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

        fig, ax = plt.subplots(figsize=(5, 3))
        for model in models:
            picked = [next((b for b in board if b["model"] == model and b["guidance"] == g), None)
                      for g in ("fine", "goal")]
            vals = [b["overall"] if b else np.nan for b in picked]
            errs = [[b["overall"] - b["ci_low"] if b and b["ci_low"] is not None else 0 for b in picked],
                    [b["ci_high"] - b["overall"] if b and b["ci_high"] is not None else 0 for b in picked]]
            ax.errorbar(["fine-grained", "goal-oriented"], vals, yerr=errs, marker="o", capsize=3, label=model)
        ax.set_ylabel("overall (%), bars: 95 % CI")
        ax.set_title("fine-grained vs goal-oriented")
        ax.legend(fontsize=7)
        figs.append(("Guidance styles", _png(fig)))

        fig, ax = plt.subplots(figsize=(5, 3))
        for b in board:
            ax.scatter(b["tokens"] / max(1, b["runs"]), b["overall"], label=f"{b['model']} ({b['guidance']})")
        ax.set_xlabel("tokens per run")
        ax.set_ylabel("overall (%)")
        ax.set_title("tokens vs score")
        ax.legend(fontsize=6)
        figs.append(("Tokens vs score", _png(fig)))

        measured = [r for r in results if r.outcome and r.outcome.get("ratio") is not None]
        if measured:
            fig, ax = plt.subplots(figsize=(5, 3))
            for model in models:
                rs = [r for r in measured if r.key.model == model]
                if rs:
                    ax.scatter([100 * sum(r.subtasks.values()) / len(SUBTASKS) for r in rs],
                               [r.outcome["ratio"] for r in rs], label=model, alpha=0.7)
            ax.axhline(1.0, color="grey", lw=0.8, ls="--")
            ax.set_xlabel("sub-tasks passed in the run (%)")
            ax.set_ylabel("held-out balanced accuracy ÷ oracle's")
            ax.set_title("outcome vs sub-task score (one point per run)")
            ax.legend(fontsize=7)
            figs.append(("Outcome vs sub-task score", _png(fig)))

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

    table = "".join(
        f"<tr><td>{b['model']}</td><td>{b['guidance']}</td><td>{b['mode']}</td><td>{b['temperature']}</td>"
        f"<td>{b['instances']}</td><td>{b['runs_per_instance']}</td>"
        + "".join(f"<td>{b[s]}/{b['runs']}</td>" for s in SUBTASKS)
        + f"<td><b>{b['overall']:.2f}</b></td><td>{format_se(b)}</td><td>{format_ci(b)}</td>"
        f"<td>{b['pass^k']:.2f} (k={b['k']})</td><td>{format_outcome(b)}</td><td class=paper>"
        + (f"{b['paper_xray_overall']:.2f}" if b["paper_xray_overall"] is not None else "-") + "</td></tr>"
        for b in board)
    notes = "".join(f"<li>{note}</li>" for note in noise_notes(board))
    failure_rows = "".join(f"<tr><td>{escape(f['model'])}</td><td>{f['class']}</td>"
                           + "".join(f"<td>{f[s] or ''}</td>" for s in SUBTASKS)
                           + f"<td>{f['total']}</td><td>{f['runs'] or ''}</td></tr>" for f in failures)
    run_rows = []
    for r in sorted(everything, key=lambda r: r.key.text):
        link = transcript_link(r, folder)
        score = "failed: " + escape(r.failed[:80]) if r.failed else f"{sum(r.subtasks.values())}/7"
        why = ", ".join(f"{s}: {c}" for s, c in sorted(r.failures.items())) if not r.failed else "infrastructure_error"
        ratio = (r.outcome or {}).get("ratio")
        run_rows.append(f"<tr><td>{escape(r.key.environment)}</td><td>{escape(r.key.task)}</td><td>{r.key.guidance}"
                        f"</td><td>{r.key.mode}</td><td>{r.key.run}</td><td>{score}</td>"
                        f"<td>{'-' if ratio is None else f'{ratio:.2f}'}</td><td>{escape(why)}</td><td>"
                        + (f"<a href='{escape(link)}'>transcript</a>" if link else "-") + "</td></tr>")
    images = "".join(f"<h2>{title}</h2><img src='data:image/png;base64,{data}'>" for title, data in figs)
    return ("<!doctype html><html><head><meta charset=utf-8><title>FedAgentBench report</title><style>"
            "body{font-family:sans-serif;margin:2em}td,th{border:1px solid #ccc;padding:3px 8px}"
            "table{border-collapse:collapse}.paper{color:#a33;font-style:italic}</style></head><body>"
            f"<h1>FedAgentBench report</h1><p>{STATISTICS_NOTE} The red italic column is the "
            "<b>paper's published X-ray number</b> for the same model and guidance (their runs, not ours).</p>"
            f"<ul>{notes}</ul>"
            "<table><tr><th>model</th><th>guidance</th><th>mode</th><th>temperature</th><th>instances</th>"
            "<th>runs/instance</th>" + "".join(f"<th>{s}</th>" for s in SUBTASKS)
            + "<th>overall</th><th>SE (run-to-run)</th><th>95 % CI (instances)</th><th>pass^k (all 7)</th>"
            "<th>outcome ÷ oracle (held-out BA)</th>"
            f"<th class=paper>paper X-ray (theirs)</th></tr>{table}</table>"
            "<h2>Why sub-tasks failed</h2><p>Failure classes (eval/taxonomy.py); infrastructure failures are whole "
            "runs, not scored, and run again by the next bench.</p><table><tr><th>model</th><th>class</th>"
            + "".join(f"<th>{s}</th>" for s in SUBTASKS) + f"<th>total</th><th>runs</th></tr>{failure_rows}</table>"
            f"{images}<h2>Runs</h2><table><tr><th>environment</th><th>task</th><th>guidance</th><th>mode</th>"
            f"<th>run</th><th>score</th><th>outcome ÷ oracle</th><th>failed sub-tasks</th><th>transcript</th></tr>{''.join(run_rows)}</table>"
            "</body></html>")
