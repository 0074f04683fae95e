"""Metadata probe: can anything an agent reads without judging content reveal the answer key?

Builds every environment over several seeds and collects, per dataset and per image-like file, the
nuisance fields an agent sees by listing folders and reading data cards: card counts, listed
formats, label file and legend mentions, description length, file names, extensions, sizes,
folder depth and modification times. The answer key is read only to score. Three questions:

* relevance: does a logistic regression on the dataset fields, fitted on some seeds, rank the
  relevant datasets of other seeds above the distractors (AUC)? Scored among the datasets whose card
  says classification: an unlabelled or segmentation set differs in its files by what it is (no label
  table, a masks folder), which the criterion is about; the AUC over all datasets is reported beside. Does a single-field threshold rule
  ("select every dataset with field >= t", t chosen on the fitting seeds) pass C1 on other seeds?
* injected files: does a logistic regression on the file fields tell the injected images
  (near-duplicates, off-topic images, wrong labels, corrupt files) from clean ones (AUC)? Truncated
  and zero-byte files are left out: their size is the breakage itself, found by reading the file.
* order: is the corrupt file the newest image-like file of its dataset more often than chance?

    python -m scripts.probe_metadata                          # tiny, fit on seeds 100-105, test on 200-205
    python -m scripts.probe_metadata --scale small --fit 100-109 --test 300-309 --json /tmp/probe.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

from environments.answer_key import load_environment_key, load_task_key

#: what counts as an image-like file to an agent listing a folder (extensions, not content)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".dcm", ".nii", ".nii.gz", ".tif", ".tiff")
#: injected file kinds the file probe targets (see the module docstring)
CONTENT_ISSUES = ("duplicate", "off_topic", "label_error", "corrupt")

DATASET_FIELDS = (
    "card_log_image_count", "card_formats", "card_label_file", "card_numeric_legend", "card_description_len",
    "log_files", "log_image_files", "non_image_files", "log_bytes", "log_median_image_bytes",
    "image_bytes_spread", "max_depth", "folders", "extensions", "label_table", "legend_file", "names_with_spaces",
    "names_non_ascii", "mtime_offset", "mtime_spread", "mtime_rank",
)
FILE_FIELDS = (
    "log_bytes", "bytes_vs_same_extension", "depth", "name_len", "name_number_rank", "mtime_rank",
    "mtime_gap_to_newest", "extension_share",
)


@dataclass
class Observations:
    """Fields and labels of every dataset and file seen, with the instance each belongs to."""

    datasets: list[dict] = field(default_factory=list)
    files: list[dict] = field(default_factory=list)
    #: (environment, seed, task, hospital -> relevant dataset names) per task instance
    instances: list[tuple[str, int, str, dict[str, list[str]]]] = field(default_factory=list)
    #: per dataset with a corrupt file: (corrupt file is newest by mtime, 1 / image-like files)
    newest: list[tuple[bool, float]] = field(default_factory=list)


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _ext(name: str) -> str:
    low = name.lower()
    return ".nii.gz" if low.endswith(".nii.gz") else PurePosixPath(low).suffix


def _ranks(values: list[float]) -> np.ndarray:
    """Ranks scaled to [0, 1] (0.5 for a single value)."""
    if len(values) < 2:
        return np.full(len(values), 0.5)
    order = np.argsort(np.argsort(np.asarray(values), kind="stable"), kind="stable")
    return order / (len(values) - 1)


def _name_number(name: str) -> float:
    digits = "".join(ch if ch.isdigit() else " " for ch in name).split()
    return float(digits[-1]) if digits else 0.0


def observe_environment(env_dir: Path, obs: Observations) -> None:
    """Add one built environment's datasets, files and task instances to ``obs``."""
    key = load_environment_key(env_dir)  # read to score only: labels, never fields
    seed = key.seed
    for task_file in sorted((env_dir / "answer_key" / "tasks").glob("*.json")):
        task_key = load_task_key(env_dir, task_file.stem)
        obs.instances.append((key.environment, seed, task_key.task_id, task_key.relevant_datasets))
    for hospital_dir in sorted((env_dir / "clients").iterdir()):
        cards = json.loads((hospital_dir / "data_cards.json").read_text("utf-8"))
        rows = []
        for card in cards:
            root = hospital_dir / card["dataset_path"]
            files = [p for p in root.rglob("*") if p.is_file()]
            stats = {p: p.stat() for p in files}
            images = [p for p in files if _is_image(p.name)]
            sizes = np.array([stats[p].st_size for p in images] or [0], float)
            mtimes = np.array([stats[p].st_mtime for p in files] or [0.0])
            rel = [p.relative_to(root).as_posix() for p in files]
            ds_key = key.dataset(hospital_dir.name, card["dataset name"])
            rows.append({
                "environment": key.environment, "seed": seed, "hospital": hospital_dir.name,
                "dataset": card["dataset name"], "relevant": bool(ds_key.relevant_to),
                "classification": "classification" in str(card.get("task_type", "")).split(", "),
                "card_log_image_count": math.log1p(float(card.get("image_count") or 0)),
                "card_formats": len([f for f in str(card.get("file_format", "")).split(",") if f.strip()]),
                "card_label_file": float("label_file" in card),
                "card_numeric_legend": float("coded as numbers" in card.get("dataset description", "")),
                "card_description_len": float(len(card.get("dataset description", ""))),
                "log_files": math.log1p(len(files)), "log_image_files": math.log1p(len(images)),
                "non_image_files": float(len(files) - len(images)),
                "log_bytes": math.log1p(sum(s.st_size for s in stats.values())),
                "log_median_image_bytes": math.log1p(float(np.median(sizes))),
                "image_bytes_spread": float(np.std(np.log1p(sizes))),
                "max_depth": float(max((r.count("/") for r in rel), default=0)),
                "folders": float(len({str(PurePosixPath(r).parent) for r in rel})),
                "extensions": float(len({_ext(p.name) for p in images})),
                "label_table": float(any(p.parent == root and p.suffix in (".csv", ".json") for p in files)),
                "legend_file": float(any(p.parent == root and p.name == "classes.txt" for p in files)),
                "names_with_spaces": float(np.mean([" " in p.name for p in images] or [0])),
                "names_non_ascii": float(np.mean([not p.name.isascii() for p in images] or [0])),
                "mtime_mean": float(mtimes.mean()), "mtime_spread": float(np.log1p(mtimes.std())),
            })
            _observe_files(ds_key, hospital_dir, images, stats, obs)
        hospital_mtimes = [r["mtime_mean"] for r in rows]
        for r, rank in zip(rows, _ranks(hospital_mtimes)):
            r["mtime_offset"] = math.copysign(math.log1p(abs(r["mtime_mean"] - np.mean(hospital_mtimes))),
                                              r["mtime_mean"] - np.mean(hospital_mtimes))
            r["mtime_rank"] = float(rank)
        obs.datasets += rows


def _observe_files(ds_key, hospital_dir: Path, images: list[Path], stats: dict, obs: Observations) -> None:
    if not ds_key.relevant_to or not images:
        return  # injected files are scored among the relevant datasets (where C2 must find them)
    issue = {r.path: r.issue for r in ds_key.files}
    rels = [p.relative_to(hospital_dir).as_posix() for p in images]
    sizes = [stats[p].st_size for p in images]
    mtimes = [stats[p].st_mtime for p in images]
    exts = [_ext(p.name) for p in images]
    by_ext: dict[str, list[int]] = {}
    for e, s in zip(exts, sizes):
        by_ext.setdefault(e, []).append(s)
    mtime_rank = _ranks(mtimes)
    number_rank = _ranks([_name_number(p.name) for p in images])
    newest = max(mtimes)
    for i, p in enumerate(images):
        kind = issue.get(rels[i], "none")
        if kind in ("truncated", "zero_byte"):
            continue
        obs.files.append({
            "environment": "", "seed": None, "injected": kind in CONTENT_ISSUES, "issue": kind,
            "log_bytes": math.log1p(sizes[i]),
            "bytes_vs_same_extension": math.log1p(sizes[i]) - math.log1p(float(np.median(by_ext[exts[i]]))),
            "depth": float(rels[i].count("/")), "name_len": float(len(p.name)),
            "name_number_rank": float(number_rank[i]), "mtime_rank": float(mtime_rank[i]),
            "mtime_gap_to_newest": math.log1p(newest - mtimes[i]),
            "extension_share": len(by_ext[exts[i]]) / len(images),
        })
    corrupt = [i for i, r in enumerate(rels) if issue.get(r) == "corrupt"]
    if corrupt:
        order = np.argsort(mtimes, kind="stable")
        obs.newest.append((int(order[-1]) in corrupt, len(corrupt) / len(images)))


def build_and_observe(environments: list[str], scale: str, seeds: list[int], data_dir: str | None,
                      work: Path) -> Observations:
    """Build each environment at each seed under ``work`` and observe it (file seeds are filled in)."""
    from environments.builder import build_environment

    obs = Observations()
    for seed in seeds:
        for env in environments:
            build_environment(env, scale, seed, work / str(seed), data_dir)
            start = len(obs.files)
            observe_environment(work / str(seed) / env, obs)
            for f in obs.files[start:]:
                f["environment"], f["seed"] = env, seed
    return obs


# ------------------------------------------------------------------------------------------ scoring

def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (ties count half); 0.5 when one class is absent."""
    labels = np.asarray(labels, bool)
    pos, neg = scores[labels], scores[~labels]
    if not len(pos) or not len(neg):
        return 0.5
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (len(pos) * len(neg)))


def _matrix(rows: list[dict], fields: tuple[str, ...]) -> np.ndarray:
    return np.array([[float(r[f]) for f in fields] for r in rows], float)


def _fit_predict(x_fit: np.ndarray, y_fit: np.ndarray, x_test: np.ndarray) -> np.ndarray:
    """Held-out scores of a standardised, lightly regularised logistic regression."""
    mean, std = x_fit.mean(0), x_fit.std(0) + 1e-9
    a, b = (x_fit - mean) / std, (x_test - mean) / std
    if len(set(y_fit.tolist())) < 2:
        return np.zeros(len(x_test))
    try:
        from sklearn.linear_model import LogisticRegression

        model = LogisticRegression(C=1.0, max_iter=2000, class_weight="balanced").fit(a, y_fit)
        return model.decision_function(b)
    except ImportError:  # plain gradient descent on the logistic loss
        w, bias = np.zeros(a.shape[1]), 0.0
        weight = np.where(y_fit, 0.5 / y_fit.mean(), 0.5 / (1 - y_fit.mean()))
        for _ in range(3000):
            p = 1 / (1 + np.exp(-(a @ w + bias)))
            g = weight * (p - y_fit)
            w -= 0.1 * (a.T @ g / len(a) + w / len(a))
            bias -= 0.1 * g.mean()
        return b @ w + bias


def classifier_auc(rows_fit: list[dict], rows_test: list[dict], fields: tuple[str, ...], label: str) -> dict:
    """Held-out AUC of the all-field classifier, and each field's own held-out AUC (distance from 0.5
    in either direction, the direction chosen on the fitting rows)."""
    y_fit = np.array([r[label] for r in rows_fit], bool)
    y_test = np.array([r[label] for r in rows_test], bool)
    x_fit, x_test = _matrix(rows_fit, fields), _matrix(rows_test, fields)
    overall = auc(_fit_predict(x_fit, y_fit, x_test), y_test)
    per_field = {}
    for j, name in enumerate(fields):
        sign = 1.0 if auc(x_fit[:, j], y_fit) >= 0.5 else -1.0
        per_field[name] = round(auc(sign * x_test[:, j], y_test), 3)
    return {"auc": round(overall, 3), "positives": int(y_test.sum()), "n": len(y_test), "fields": per_field}


def _rule_passes(rows: list[dict], instances: list, name: str, sign: float, t: float) -> list[bool]:
    """Per task instance: does "select every dataset with sign * field >= t" pick exactly the key's
    relevant datasets at every hospital?"""
    chosen: dict[tuple, set[str]] = {}
    for r in rows:
        if sign * r[name] >= t:
            chosen.setdefault((r["environment"], r["seed"], r["hospital"]), set()).add(r["dataset"])
    return [all(chosen.get((env, seed, h), set()) == set(names) for h, names in relevant.items())
            for env, seed, _, relevant in instances]


def threshold_rules(fit: Observations, test: Observations, fields: tuple[str, ...]) -> dict[str, dict]:
    """Per field: the threshold rule that passes C1 most often on the fitting seeds, and its pass rate
    there and on the test seeds."""
    out = {}
    for name in fields:
        best = (-1.0, 1.0, 0.0)
        values = sorted({r[name] for r in fit.datasets})
        for sign in (1.0, -1.0):
            for t in [sign * v for v in values]:
                rate = float(np.mean(_rule_passes(fit.datasets, fit.instances, name, sign, t)))
                best = max(best, (rate, sign, t))
        rate, sign, t = best
        held = float(np.mean(_rule_passes(test.datasets, test.instances, name, sign, t)))
        out[name] = {"fit_rate": round(rate, 3), "test_rate": round(held, 3),
                     "rule": f"{'' if sign > 0 else '-'}{name} >= {t:.3g}"}
    return out


def probe(fit: Observations, test: Observations) -> dict:
    """Every figure of the probe: relevance and injected-file AUCs, threshold rules, mtime order."""
    newest = fit.newest + test.newest
    labelled = [[r for r in o.datasets if r["classification"]] for o in (fit, test)]
    return {
        "relevance": classifier_auc(*labelled, DATASET_FIELDS, "relevant"),
        "relevance_all_datasets": classifier_auc(fit.datasets, test.datasets, DATASET_FIELDS, "relevant"),
        "injected": classifier_auc(fit.files, test.files, FILE_FIELDS, "injected"),
        "threshold_rules": threshold_rules(fit, test, DATASET_FIELDS),
        "corrupt_newest": {"datasets": len(newest), "newest": int(sum(n for n, _ in newest)),
                           "chance": round(float(sum(c for _, c in newest)), 2)},
        "instances": {"fit": len(fit.instances), "test": len(test.instances)},
    }


def _seeds(text: str) -> list[int]:
    if "-" in text:
        lo, hi = text.split("-")
        return list(range(int(lo), int(hi) + 1))
    return [int(s) for s in text.split(",")]


def main(argv: list[str] | None = None) -> int:
    from environments.concepts import ENVIRONMENTS

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scale", default="tiny")
    parser.add_argument("--fit", default="100-105", help="seeds the classifier and the rules are fitted on")
    parser.add_argument("--test", default="200-205", help="held-out seeds they are scored on")
    parser.add_argument("--env", default=",".join(ENVIRONMENTS))
    parser.add_argument("--data-dir", default=os.environ.get("FEDAGENTBENCH_DATA"))
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    envs = args.env.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        fit = build_and_observe(envs, args.scale, _seeds(args.fit), args.data_dir, Path(tmp) / "fit")
        test = build_and_observe(envs, args.scale, _seeds(args.test), args.data_dir, Path(tmp) / "test")
    result = probe(fit, test)
    rel, inj, newest = result["relevance"], result["injected"], result["corrupt_newest"]
    print(f"scale {args.scale}, fitted on seeds {args.fit}, scored on seeds {args.test}, environments {args.env}")
    every = result["relevance_all_datasets"]
    print(f"relevance: classifier AUC {rel['auc']:.3f} on {rel['n']} held-out classification datasets "
          f"({rel['positives']} relevant); {every['auc']:.3f} on all {every['n']} (segmentation, unlabelled included)")
    print("  strongest single fields (held-out AUC): " + ", ".join(
        f"{k} {v:.2f}" for k, v in sorted(rel["fields"].items(), key=lambda kv: -abs(kv[1] - 0.5))[:5]))
    print(f"injected files: classifier AUC {inj['auc']:.3f} on {inj['n']} held-out image files ({inj['positives']} injected)")
    print("  strongest single fields (held-out AUC): " + ", ".join(
        f"{k} {v:.2f}" for k, v in sorted(inj["fields"].items(), key=lambda kv: -abs(kv[1] - 0.5))[:5]))
    rules = sorted(result["threshold_rules"].items(), key=lambda kv: -kv[1]["test_rate"])
    print(f"C1 by one field (best of {len(rules)} fields, threshold fitted, {result['instances']['test']} held-out "
          f"task instances): " + ", ".join(f"{v['rule']}: {100 * v['test_rate']:.0f} %" for _, v in rules[:3]))
    print(f"corrupt file newest by mtime: {newest['newest']} of {newest['datasets']} datasets "
          f"(chance {newest['chance']:.1f})")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n", "utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
