"""Score one workflow run against its answer key: seven sub-tasks, each pass or fail, plus metrics.

  S1  extracted modality, target classes and requirement all match the key
  C1  dataset selection: precision / recall / F1 per client; pass when every client is exact
  S2  approval accuracy over clients; pass when every client is right
  C2  schema compliance and cleaning precision / recall of removed files, per approved client
  C3  exact label mappings and the right target folder for every kept file
  S3  chosen algorithm in the key's acceptable set
  S4  training started and completed, with final metrics

Outputs are matched to their source files through the provenance manifest that every tool (and
the per-phase upstream) keeps beside its output folder; files it does not list are matched by the
flattened source name (``P0001/study_1/IM0001.dcm`` -> ``P0001__study_1__IM0001.png``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

GRADER_VERSION = "1"
SUBTASKS = ("S1", "C1", "S2", "C2", "C3", "S3", "S4")

_MODALITY_WORDS = {
    "dermatoscopy": ("dermatoscop", "dermoscop", "dermatolog", "skin"),
    "ultrasound": ("ultrasound", "sonograph", "echograph"),
    "fundus": ("fundus", "retina", "retinal"),
    "histopathology": ("histopath", "histolog", "h&e", "pathology"),
    "mri": ("mri", "magnetic resonance"),
    "xray": ("x-ray", "xray", "radiograph", "cxr", "x ray"),
}


def normalise_modality(text: str) -> str:
    low = text.lower()
    for modality, words in _MODALITY_WORDS.items():
        if any(w in low for w in words):
            return modality
    return low.strip()


def normalise_name(text: str) -> str:
    return re.sub(r"[\s\-]+", "_", str(text).strip().lower())


def _prf(chosen: set[str], gold: set[str]) -> dict[str, float]:
    tp = len(chosen & gold)
    precision = tp / len(chosen) if chosen else (1.0 if not gold else 0.0)
    recall = tp / len(gold) if gold else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": round(precision, 4), "recall": round(recall, 4), "f1": round(f1, 4)}


def _sub(passed: bool, detail: str, **metrics: Any) -> dict[str, Any]:
    return {"passed": bool(passed), "detail": detail, "metrics": metrics}


def score_s1(requirements: dict | None, key) -> dict[str, Any]:
    if not requirements:
        return _sub(False, "no requirements extracted")
    gold = key.requirements
    modality_ok = normalise_modality(requirements.get("modality", "")) == gold.modality
    classes_ok = {normalise_name(c) for c in requirements.get("target_classes", [])} == {
        normalise_name(c) for c in gold.target_classes}
    requirement_ok = normalise_name(requirements.get("requirement", "")) == gold.requirement
    detail = f"modality {'ok' if modality_ok else 'wrong'}, classes {'ok' if classes_ok else 'wrong'}, " \
             f"requirement {'ok' if requirement_ok else 'wrong'}"
    return _sub(modality_ok and classes_ok and requirement_ok, detail, modality=modality_ok, classes=classes_ok,
                requirement=requirement_ok)


def score_c1(clients: dict[str, Any], key) -> dict[str, Any]:
    per_client, exact = {}, True
    for name, gold in key.relevant_datasets.items():
        rec = clients.get(name)
        chosen = set(rec.selected_datasets) if rec else set()
        per_client[name] = _prf(chosen, set(gold))
        exact &= chosen == set(gold)
    f1 = sum(m["f1"] for m in per_client.values()) / max(1, len(per_client))
    return _sub(exact, f"mean F1 {f1:.2f} over {len(per_client)} clients", mean_f1=round(f1, 4), clients=per_client)


def score_s2(clients: dict[str, Any], key) -> dict[str, Any]:
    names = sorted(key.relevant_datasets)
    right = sum(bool(clients.get(n) and clients[n].approved) == (n in key.approved_hospitals) for n in names)
    accuracy = right / max(1, len(names))
    return _sub(right == len(names), f"approval accuracy {accuracy:.2f}", accuracy=round(accuracy, 4))


def _provenance(folder: Path, candidates: list[str]) -> dict[str, str]:
    """Output file (relative to ``folder``) -> source path (workspace-relative).

    From the provenance manifest the tools keep beside each output folder; files it does not list
    are matched by the flattened source name (see module docstring).
    """
    from graphs.upstream import flat_name
    from tools.sandbox import load_origins

    origins = load_origins(folder)
    by_stem = {Path(flat_name(c.split("/", 2)[2])).stem: c for c in candidates}
    by_stem.update({Path(flat_name(c.split("/", 2)[2])).stem.split("__")[-1]: c for c in candidates
                    if Path(flat_name(c.split("/", 2)[2])).stem.split("__")[-1] not in by_stem})
    out = {}
    for path in folder.rglob("*"):
        if path.is_file():
            rel = path.relative_to(folder).as_posix()
            source = origins.get(rel)
            if source is None:
                stem = path.stem.split("__", 1)[1] if path.stem.split("__", 1)[0] in by_stem else path.stem
                source = by_stem.get(path.stem) or by_stem.get(stem)
            if source is not None:
                out[rel] = source
    return out


def score_c2(clients: dict[str, Any], key, env_dir: Path) -> dict[str, Any]:
    """Schema compliance and removal precision / recall at every approved client."""
    from environments.readers import ImageReadError, read_image

    schema = key.target_schema
    details, all_ok = {}, True
    for hospital in key.approved_hospitals:
        rec = clients.get(hospital)
        if not rec or not rec.cleaned_path:
            details[hospital] = {"compliant": False, "reason": "no cleaned dataset"}
            all_ok = False
            continue
        root = env_dir / "clients" / hospital / rec.cleaned_path
        problems: list[str] = []
        kept: set[str] = set()
        removed_gold = {r.path for rs in key.removed_files[hospital].values() for r in rs
                        if r.reason not in ("label_file",)}
        clean_gold = {c.path for cs in key.clean_files[hospital].values() for c in cs}
        for dataset in key.relevant_datasets[hospital]:
            ds_root = root / dataset
            if not ds_root.is_dir():
                problems.append(f"{dataset}: missing")
                continue
            for path in ds_root.rglob("*"):
                if path.is_dir():
                    if path.parent != ds_root:
                        problems.append(f"nested folder {path.relative_to(root)}")
                    continue
                if path.parent.parent != ds_root:
                    problems.append(f"file outside a class folder: {path.relative_to(root)}")
                try:
                    pixels = read_image(path)
                except ImageReadError:
                    problems.append(f"undecodable {path.name}")
                    continue
                mode_ok = (pixels.ndim == 3) == (schema.mode == "RGB")
                size_ok = pixels.shape[:2] == (schema.image_size, schema.image_size)
                if path.suffix.lower() != ".png" or not size_ok or not mode_ok:
                    problems.append(f"not in the standard schema: {path.name}")
            kept |= set(_provenance(ds_root, sorted(removed_gold | clean_gold)).values())
        removed_found = removed_gold - kept
        lost = clean_gold - kept
        wrongly_kept = removed_gold & kept
        n_removed = len(removed_found) + len(lost)  # everything not kept was removed by the agent
        precision = len(removed_found) / n_removed if n_removed else 1.0
        recall = len(removed_found) / len(removed_gold) if removed_gold else 1.0
        ok = not problems and not lost and not wrongly_kept
        all_ok &= ok
        details[hospital] = {"compliant": not problems, "problems": problems[:5], "clean_lost": len(lost),
                             "flagged_kept": len(wrongly_kept), "removal_precision": round(precision, 4),
                             "removal_recall": round(recall, 4)}
    compliant = sum(d.get("compliant", False) for d in details.values())
    return _sub(all_ok, f"{compliant}/{len(details)} clients compliant", clients=details)


def score_c3(clients: dict[str, Any], key, env_dir: Path) -> dict[str, Any]:
    """Exact label mappings, and every clean file in its target folder."""
    mappings_total = mappings_exact = placed = expected = 0
    details, all_ok = {}, True
    for hospital in key.approved_hospitals:
        rec = clients.get(hospital)
        gold_maps = key.label_mappings.get(hospital, {})
        got_maps = rec.label_mappings if rec else {}
        exact = {d: got_maps.get(d) == m for d, m in gold_maps.items()}
        mappings_total += len(exact)
        mappings_exact += sum(exact.values())
        clean = {c.path: c for cs in key.clean_files.get(hospital, {}).values() for c in cs}
        where: dict[str, str] = {}
        root = env_dir / "clients" / hospital / rec.harmonised_path if rec and rec.harmonised_path else None
        extra: set[str] = set()
        if root is not None and root.is_dir():
            for rel, source in _provenance(root, sorted(clean)).items():
                where[source] = rel.split("/", 1)[0]
            extra = {d.name for d in root.iterdir() if d.is_dir()} - set(key.target_schema.classes)
        wanted = {p: c.target_class for p, c in clean.items() if c.target_class is not None}
        right = sum(where.get(p) == t for p, t in wanted.items())
        misplaced = sum(1 for p in where if p in clean and clean[p].target_class is None)
        placed += right
        expected += len(wanted)
        ok = all(exact.values()) and right == len(wanted) and not extra and not misplaced
        all_ok &= ok
        details[hospital] = {"mappings_exact": sum(exact.values()), "mappings": len(exact), "placed": right,
                             "expected": len(wanted), "dropped_but_kept": misplaced, "extra_folders": sorted(extra)}
    accuracy = mappings_exact / mappings_total if mappings_total else 0.0
    placement = placed / expected if expected else 0.0
    return _sub(all_ok and mappings_total > 0, f"mapping accuracy {accuracy:.2f}, placement {placement:.2f}",
                mapping_accuracy=round(accuracy, 4), placement=round(placement, 4), clients=details)


def score_s3(algorithm: str | None, key) -> dict[str, Any]:
    ok = bool(algorithm) and algorithm.strip().lower() in {a.lower() for a in key.acceptable_algorithms}
    return _sub(ok, f"chose {algorithm!r}", algorithm=algorithm)


def score_s4(training: Any) -> dict[str, Any]:
    t = training if isinstance(training, dict) else (training.model_dump() if training is not None else {})
    ok = bool(t.get("started")) and bool(t.get("completed"))
    return _sub(ok, f"training {t.get('status')}", started=bool(t.get("started")), completed=bool(t.get("completed")),
                **{f"final_{k}": v for k, v in (t.get("final_metrics") or {}).items()})


def score_state(state, key) -> dict[str, Any]:
    """All seven sub-task scores of a finished run (the workflow's evaluation node calls this)."""
    env_dir = Path(state.config.env_dir)
    subtasks = {
        "S1": score_s1(state.requirements, key),
        "C1": score_c1(state.clients, key),
        "S2": score_s2(state.clients, key),
        "C2": score_c2(state.clients, key, env_dir),
        "C3": score_c3(state.clients, key, env_dir),
        "S3": score_s3(state.algorithm, key),
        "S4": score_s4(state.training),
    }
    return {"grader_version": GRADER_VERSION, "subtasks": subtasks,
            "passed": sum(s["passed"] for s in subtasks.values())}
