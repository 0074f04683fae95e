"""Measure the data-quality detectors against the answer keys, per environment.

Runs the three detectors of ``tools.detectors`` on every relevant dataset of every environment (raw
files, as a client finds them) and prints precision and recall per environment and detector.

    python -m scripts.bench_detectors                 # builds all six at small scale in a temp dir
    python -m scripts.bench_detectors --envs /tmp/small --json out/bench_detectors.json
    python -m scripts.bench_detectors --scale real --data-dir ../shared/datasets   # the label-error comparison
    python -m scripts.bench_detectors --scale tiny --seeds 500-519 --fast          # recall over many seeds

Counting: an injected duplicate pair (copy, original) is found when both land in one predicted
duplicate group; a flagged duplicate is correct when it belongs to such a pair. Off-topic and label
errors are counted per file. Label errors are sought among the images not flagged off-topic.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from environments.answer_key import DatasetKey, load_environment_key
from tools import detectors
from tools.labels import dataset_labels, is_image_name
from tools.sandbox import walk_files

#: label-error detectors compared: (method, probability model, guard) of ``detectors.label_errors``;
#: "label_errors" is the one the agents' tool runs (its defaults)
LABEL_VARIANTS = {
    "label_errors": ("cleanlab", "features", 0.05),
    "label_errors (cleanlab alone, no guard)": ("cleanlab", "features", None),
    "label_errors (old threshold rule)": ("threshold", "features", 0.05),
    "label_errors (cleanlab on a CNN)": ("cleanlab", "cnn", 0.05),
}


def bench_dataset(ws: Path, ds: DatasetKey, label_variants: list[str]) -> dict[str, dict[str, float]]:
    """tp / flagged / positives counts for each detector on one raw dataset."""
    root = ws / ds.path
    files = [p for p in walk_files(root) if is_image_name(p)]
    data = detectors.load_images(files)
    rel = [f.relative_to(ws).as_posix() for f in data.files]
    issue = {r.path: r.issue for r in ds.files}
    out: dict[str, dict[str, float]] = {}

    found = detectors.near_duplicates(data)
    group = {i: i for i in range(len(rel))}
    for keep, dup, _ in found:
        group[dup] = keep
    pairs = [(r.path, r.duplicate_of) for r in ds.files if r.issue == "duplicate" and r.duplicate_of]
    index = {p: i for i, p in enumerate(rel)}
    hit_pairs = [(a, b) for a, b in pairs if a in index and b in index and group[index[a]] == group[index[b]]]
    in_pair = {p for a, b in hit_pairs for p in (a, b)}
    kept_original = sum(1 for a, b in hit_pairs if group[index[b]] == index[b])
    out["duplicates"] = {"flagged": len(found), "tp": sum(1 for _, d, _ in found if rel[d] in in_pair),
                         "positives": len(pairs), "found": len(hit_pairs), "kept_original": kept_original}

    flagged_off = {i for i, _, _ in detectors.off_topic(data)}
    positives = {i for i, p in enumerate(rel) if issue.get(p) == "off_topic"}
    out["off_topic"] = {"flagged": len(flagged_off), "tp": len(flagged_off & positives), "positives": len(positives),
                        "found": len(flagged_off & positives)}

    labels, _ = dataset_labels(root)
    keep = [i for i in range(len(rel)) if i not in flagged_off and data.files[i] in labels]
    sub = detectors.Loaded([data.files[i] for i in keep], data.grey[keep], data.rgb[keep], {})
    positives = {i for i, p in enumerate(rel) if issue.get(p) == "label_error"}
    for name in label_variants:
        method, probabilities, guard = LABEL_VARIANTS[name]
        started = time.perf_counter()
        found_at = detectors.label_errors(sub, [labels[data.files[i]] for i in keep], method=method,
                                          probabilities=probabilities, max_given_probability=guard)
        flags = {keep[i] for i, _, _ in found_at}
        out[name] = {"flagged": len(flags), "tp": len(flags & positives), "positives": len(positives),
                     "found": len(flags & positives), "seconds": time.perf_counter() - started}
    return out


def run(envs_dir: Path, label_variants: list[str] | None = None,
        misses: dict[str, list[str]] | None = None) -> dict[str, dict[str, dict[str, float]]]:
    """Counts per environment and detector; ``label_variants``: the label-error detectors to compare
    (default: all of LABEL_VARIANTS)."""
    label_variants = list(label_variants or LABEL_VARIANTS)
    detectors_run = ("duplicates", "off_topic", *label_variants)
    results: dict[str, dict[str, dict[str, float]]] = {}
    for env_dir in sorted(p for p in envs_dir.iterdir() if (p / "answer_key").is_dir()):
        key = load_environment_key(env_dir)
        totals = {d: {"flagged": 0, "tp": 0, "positives": 0, "found": 0, "kept_original": 0, "seconds": 0.0,
                      "datasets": 0, "datasets_missed": 0}
                  for d in detectors_run}
        for ds in key.datasets:
            if not ds.relevant_to:
                continue
            for det, counts in bench_dataset(env_dir / "clients" / ds.hospital, ds, label_variants).items():
                for k, v in counts.items():
                    totals[det][k] += v
                totals[det]["datasets"] += counts["positives"] > 0
                if counts["found"] < counts["positives"]:
                    totals[det]["datasets_missed"] += 1
                    if misses is not None:
                        misses.setdefault(det, []).append(f"{env_dir.parent.name}/{env_dir.name}/{ds.hospital}/{ds.name}")
        for det in detectors_run:
            totals[det]["seconds"] = round(totals[det]["seconds"], 1)
        results[env_dir.name] = totals
    return results


def metrics(c: dict[str, float]) -> tuple[float, float]:
    precision = c["tp"] / c["flagged"] if c["flagged"] else 1.0
    recall = c["found"] / c["positives"] if c["positives"] else 1.0
    return precision, recall


def print_table(results: dict[str, dict[str, dict[str, float]]], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for col in ("detector", "environment", "injected", "flagged", "correct", "precision", "recall",
                "datasets missed", "seconds"):
        table.add_column(col, justify="left" if col in ("detector", "environment") else "right")
    for det in next(iter(results.values()), {}):
        total = {"flagged": 0, "tp": 0, "positives": 0, "found": 0, "seconds": 0.0, "datasets": 0, "datasets_missed": 0}
        for env, by_det in results.items():
            c = by_det[det]
            for k in total:
                total[k] += c.get(k, 0)
            p, r = metrics(c)
            table.add_row(det, env, str(c["positives"]), str(c["flagged"]), str(c["tp"]), f"{p:.2f}", f"{r:.2f}",
                          f"{c.get('datasets_missed', 0)}/{c.get('datasets', 0)}", f"{c['seconds']:.1f}")
        p, r = metrics(total)
        table.add_row(f"[bold]{det}[/]", "[bold]all[/]", str(total["positives"]), str(total["flagged"]), str(total["tp"]),
                      f"[bold]{p:.2f}[/]", f"[bold]{r:.2f}[/]", f"{total['datasets_missed']}/{total['datasets']}",
                      f"{total['seconds']:.1f}", end_section=True)
    Console(width=140).print(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--envs", type=Path, help="folder of built environments (default: build them)")
    parser.add_argument("--scale", default="small")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seeds", help="several seeds, e.g. 500-519 (summed per environment); overrides --seed")
    parser.add_argument("--fast", action="store_true", help="only the agents' label-error detector")
    parser.add_argument("--misses", action="store_true", help="list the datasets where a detector missed")
    parser.add_argument("--data-dir", default=os.environ.get("FEDAGENTBENCH_DATA"))
    parser.add_argument("--json", type=Path, help="also write the counts here")
    args = parser.parse_args(argv)
    variants = ["label_errors"] if args.fast else None
    misses: dict[str, list[str]] = {}
    seeds = [args.seed]
    if args.seeds:
        lo, _, hi = args.seeds.partition("-")
        seeds = list(range(int(lo), int(hi or lo) + 1))
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        if args.envs is not None:
            results = run(args.envs, variants, misses)
        else:
            from environments.builder import build_environment
            from environments.concepts import ENVIRONMENTS

            results = {}
            for seed in seeds:
                envs = Path(tmp) / str(seed)
                for env in ENVIRONMENTS:
                    build_environment(env, args.scale, seed, envs, args.data_dir)
                for env, by_det in run(envs, variants, misses).items():
                    into = results.setdefault(env, {})
                    for det, counts in by_det.items():
                        for k, v in counts.items():
                            into.setdefault(det, {}).setdefault(k, 0)
                            into[det][k] += v
        seconds = time.perf_counter() - started
    where = args.envs.name if args.envs else f"{args.scale}, seeds {args.seeds or args.seed}"
    print_table(results, f"detectors vs answer keys ({where}), {seconds:.0f} s")
    if args.misses:
        for det, names in misses.items():
            if det in ("duplicates", "off_topic"):
                print(f"{det} missed in: " + ", ".join(names))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1) + "\n", "utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
