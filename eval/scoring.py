"""Score one workflow run against its answer key: seven sub-tasks, each pass or fail, plus metrics.

Every sub-task is scored on what the model itself produced, never on what the harness or the key
supplied (per-phase mode hands a phase the key's upstream result; that input is not credited):

  S1  S1's own answer: modality, target classes and requirement all match the key
  C1  dataset selection: precision / recall / F1 per client; pass when every client is exact
  S2  against the replies S2 was shown: it approved exactly the clients that reported a dataset
  C2  per approved client (see :func:`score_c2`): exact gates for the schema, the class folders and
      broken / non-image files; near-duplicate groups and off-topic images found, counted together
      (misses allowed: :func:`c2_misses_allowed`, none of two, one of three to nine, 20 % beyond;
      a kind with two or more items may not be missed entirely); at most 5 % of the clean images
      lost (at least 2 allowed). Label errors are reported as
      removal precision / recall beside the pass but do not gate it: the tools cannot find them
      reliably, and about a quarter of them do not change the target class.
  C3  against the files C3 was given (C2's output end to end): for every local class folder it
      received, the key's mapping; every received file in the folder of its class's target (or
      dropped); no other folders
  S3  chosen algorithm in the key's acceptable set (trainable algorithms only)
  S4  the algorithm S4 was handed (S3's, or the key's in per-phase mode) trained on every client it
      was handed, completed, with finite final metrics

Outputs are matched to their source files through the provenance manifest that every tool (and
the per-phase upstream) keeps beside its output folder; files it does not list are matched by the
flattened source name (``P0001/study_1/IM0001.dcm`` -> ``P0001__study_1__IM0001.png``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agents.results import normalise_modality  # noqa: F401 - scorers and callers use it here

GRADER_VERSION = "5"  # 3: the held-out outcome beside the sub-tasks; 4: personalised algorithms scored on their hospitals' models; 5: C2 counts missed duplicates and off-topic images together (c2_misses_allowed)
SUBTASKS = ("S1", "C1", "S2", "C2", "C3", "S3", "S4")

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
        replied = bool(rec) and rec.c1_answered
        chosen = set(rec.selected_datasets) if rec else set()
        per_client[name] = {**_prf(chosen, set(gold)), "replied": replied}
        exact &= replied and chosen == set(gold)
    f1 = sum(m["f1"] for m in per_client.values()) / max(1, len(per_client))
    return _sub(exact, f"mean F1 {f1:.2f} over {len(per_client)} clients", mean_f1=round(f1, 4), clients=per_client)


def score_s2(shown: dict[str, bool], answer: list[str] | None) -> dict[str, Any]:
    """S2 against the replies it was shown: approve exactly the clients that reported a dataset."""
    if answer is None:
        return _sub(False, "no answer", accuracy=0.0)
    approved = set(answer)
    right = sum((name in approved) == reported for name, reported in shown.items())
    accuracy = right / max(1, len(shown))
    ok = bool(shown) and right == len(shown) and approved <= set(shown)
    return _sub(ok, f"approval accuracy {accuracy:.2f} against the replies shown", accuracy=round(accuracy, 4))


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


#: C2 thresholds (module docstring): recall of duplicate groups and off-topic images together, and the clean
#: images a client may lose: max(C2_MIN_LOST, C2_MAX_LOST x clean units). Measured on unseen tiny
#: environments (seed 2026): the skyline's detectors (duplicates, off-topic) lose 0-2 clean images
#: per client on real data; removing every flag, label-error flags included, loses 3-28.
C2_MIN_RECALL = 0.8
C2_MAX_LOST = 0.05
C2_MIN_LOST = 2


def c2_misses_allowed(items: int) -> int:
    """How many of a client's injected near-duplicate groups and off-topic images C2 may miss.

    A recall threshold alone (0.8) turns one miss into a failure whenever fewer than five items were
    injected, which at tiny scale is every client (issue 22). Counted together, one miss is allowed
    from three items on, and ``1 - C2_MIN_RECALL`` of them (rounded down) from ten on; of one or two
    items none may be missed, so that finding nothing never passes."""
    if items < 3:
        return 0
    return max(1, int((1 - C2_MIN_RECALL) * items + 1e-9))

Locate = Callable[[str, str], Path]


def _schema_problems(ds_root: Path, root: Path, schema) -> list[str]:
    from environments.readers import ImageReadError, read_image

    problems: list[str] = []
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
    return problems


def score_c2(clients: dict[str, Any], key, env_key, locate: Locate) -> dict[str, Any]:
    """Per approved client: exact gates, recall thresholds, a bound on clean images lost.

    Units of clean data: every clean image, except that an injected near-duplicate and its original
    form one group (unordered: keeping either one is right). A unit is lost when none of it is kept;
    a group is resolved when exactly one of it is kept.
    """
    schema = key.target_schema
    details, all_ok = {}, True
    for hospital in key.approved_hospitals:
        rec = clients.get(hospital)
        if not rec or not rec.cleaned_path:
            details[hospital] = {"passed": False, "reason": "no cleaned dataset"}
            all_ok = False
            continue
        root = locate(hospital, rec.cleaned_path)
        problems: list[str] = []
        units = lost = groups = resolved = off_total = off_found = le_total = le_removed = 0
        removed_images = removed_right = 0
        for dataset in key.relevant_datasets[hospital]:
            ds_key = env_key.dataset(hospital, dataset)
            ds_root = root / dataset
            if not ds_root.is_dir():
                problems.append(f"{dataset}: missing")
                continue
            problems += _schema_problems(ds_root, root, schema)
            where = _provenance(ds_root, [f.path for f in ds_key.files])
            kept: dict[str, str] = {src: rel.split("/", 1)[0] for rel, src in where.items()}
            records = {f.path: f for f in ds_key.files}
            for src, folder in kept.items():
                f = records.get(src)
                if f is None:
                    continue
                if f.kind != "image":
                    problems.append(f"kept a {f.issue.replace('_', ' ')} file: {Path(src).name}")
                elif f.issue != "off_topic" and folder != f.site_label:
                    problems.append(f"{Path(src).name} filed under {folder!r}, labelled {f.site_label!r}")
            group_of = {f.path: f.duplicate_of for f in ds_key.files if f.issue == "duplicate" and f.duplicate_of}
            members: dict[str, list[str]] = {}
            for f in ds_key.files:
                if f.kind == "image" and f.issue in ("none", "duplicate"):
                    head = group_of.get(f.path, f.path)
                    members.setdefault(head, []).append(f.path)
            for paths in members.values():
                n_kept = sum(p in kept for p in paths)
                units += 1
                lost += n_kept == 0
                if len(paths) > 1:
                    groups += 1
                    resolved += n_kept == 1
                removed_images += len(paths) - n_kept
                removed_right += min(len(paths) - n_kept, len(paths) - 1)
            for f in ds_key.files:
                if f.issue == "off_topic":
                    off_total += 1
                    off_found += f.path not in kept
                    removed_images += f.path not in kept
                    removed_right += f.path not in kept
                elif f.issue == "label_error":
                    le_total += 1
                    le_removed += f.path not in kept
                    removed_images += f.path not in kept
                    removed_right += f.path not in kept
        missed = (groups - resolved) + (off_total - off_found)
        misses_allowed = c2_misses_allowed(groups + off_total)
        whole_kind_missed = (groups >= 2 and resolved == 0) or (off_total >= 2 and off_found == 0)
        allowance = max(C2_MIN_LOST, int(C2_MAX_LOST * units))
        ok = (not problems and missed <= misses_allowed and not whole_kind_missed and lost <= allowance)
        all_ok &= ok
        details[hospital] = {
            "passed": ok, "compliant": not problems, "problems": problems[:5],
            "duplicate_groups_resolved": f"{resolved}/{groups}", "off_topic_found": f"{off_found}/{off_total}",
            "missed": missed, "misses_allowed": misses_allowed,
            "clean_lost": lost, "clean_lost_allowed": allowance,
            "label_error_recall": round(le_removed / le_total, 4) if le_total else None,
            "removal_precision": round(removed_right / removed_images, 4) if removed_images else None,
        }
    passed = sum(d.get("passed", False) for d in details.values())
    return _sub(all_ok and bool(details), f"{passed}/{len(details)} clients pass", clients=details)


def _norm_target(value: Any) -> str | None:
    return None if value in (None, "", "drop", "none", "None") else str(value)


def score_c3(clients: dict[str, Any], key, env_key, locate: Locate) -> dict[str, Any]:
    """Against the files C3 received: the key's mapping of each class folder, and every file placed."""
    mappings_total = mappings_exact = placed = expected = 0
    details, all_ok = {}, True
    targets = set(key.target_schema.classes)
    for hospital in key.approved_hospitals:
        rec = clients.get(hospital)
        if not rec or not rec.harmonisation_input:
            details[hospital] = {"passed": False, "reason": "no input (nothing to harmonise)"}
            all_ok = False
            continue
        in_root = locate(hospital, rec.harmonisation_input)
        out_root = locate(hospital, rec.harmonised_path) if rec.harmonised_path else None
        gold_maps = key.label_mappings.get(hospital, {})
        got_maps = rec.label_mappings or {}
        sources = [f.path for d in gold_maps for f in env_key.dataset(hospital, d).files]
        where: dict[str, str] = {}
        extra: set[str] = set()
        if out_root is not None and out_root.is_dir():
            where = {src: rel.split("/", 1)[0] for rel, src in _provenance(out_root, sources).items()}
            extra = {d.name for d in out_root.iterdir() if d.is_dir()} - targets
        n_exact = n_maps = n_placed = n_expected = misplaced = 0
        for dataset, gold in gold_maps.items():
            ds_in = in_root / dataset
            if not ds_in.is_dir():
                continue  # C2 did not deliver it: not C3's to map
            got = {str(k): _norm_target(v) for k, v in (got_maps.get(dataset) or {}).items()}
            received = {rel: src for rel, src in _provenance(ds_in, sources).items()}
            for folder in sorted(d.name for d in ds_in.iterdir() if d.is_dir()):
                if folder not in gold:
                    continue  # a class folder C2 invented: not C3's mistake
                n_maps += 1
                n_exact += folder in got and got[folder] == gold[folder]
            for rel, src in received.items():
                folder = rel.split("/", 1)[0]
                if folder not in gold:
                    continue
                want = gold[folder]
                if want is None:
                    misplaced += src in where
                else:
                    n_expected += 1
                    n_placed += where.get(src) == want
        ok = n_maps > 0 and n_exact == n_maps and n_placed == n_expected and not extra and not misplaced
        all_ok &= ok
        mappings_total += n_maps
        mappings_exact += n_exact
        placed += n_placed
        expected += n_expected
        details[hospital] = {"passed": ok, "mappings_exact": n_exact, "mappings": n_maps, "placed": n_placed,
                             "expected": n_expected, "dropped_but_kept": misplaced, "extra_folders": sorted(extra)}
    accuracy = mappings_exact / mappings_total if mappings_total else 0.0
    placement = placed / expected if expected else 0.0
    return _sub(all_ok and mappings_total > 0, f"mapping accuracy {accuracy:.2f}, placement {placement:.2f}",
                mapping_accuracy=round(accuracy, 4), placement=round(placement, 4), clients=details)


def trainable_acceptable(key) -> list[str]:
    """The key's acceptable algorithms that this benchmark can train (an untrainable one is never right)."""
    from fl.registry import query

    trainable = {a.name.lower() for a in query(executable=True)}
    return [a for a in key.acceptable_algorithms if a.lower() in trainable]


def score_s3(algorithm: str | None, key) -> dict[str, Any]:
    acceptable = {a.lower() for a in trainable_acceptable(key)}
    ok = bool(algorithm) and algorithm.strip().lower() in acceptable
    return _sub(ok, f"chose {algorithm!r}", algorithm=algorithm)


def score_s4(training: Any, plan: dict[str, Any] | None) -> dict[str, Any]:
    """The handed algorithm trained on every handed client, completed, with finite metrics."""
    t = training if isinstance(training, dict) else (training.model_dump() if training is not None else {})
    plan = plan or {}
    metrics = t.get("final_metrics") or {}
    finite = bool(metrics) and all(isinstance(v, (int, float)) and math.isfinite(v) for v in metrics.values())
    algorithm_ok = bool(plan.get("algorithm")) and str(t.get("algorithm") or "").lower() == str(plan["algorithm"]).lower()
    clients_ok = bool(plan.get("clients")) and sorted(t.get("clients") or []) == sorted(plan["clients"])
    ok = bool(t.get("started")) and bool(t.get("completed")) and algorithm_ok and clients_ok and finite
    why = [w for w, bad in (("not completed", not t.get("completed")), ("another algorithm", not algorithm_ok),
                            ("not every client", not clients_ok), ("no finite metrics", not finite)) if bad]
    return _sub(ok, f"training {t.get('status')}" + (f" ({', '.join(why)})" if why and t.get("started") else ""),
                started=bool(t.get("started")), completed=bool(t.get("completed")), algorithm=algorithm_ok,
                all_clients=clients_ok, **{f"final_{k}": v for k, v in metrics.items()})


def score_state(state, key) -> dict[str, Any]:
    """All seven sub-task scores of a finished run (the workflow's evaluation node calls this)."""
    from environments.answer_key import load_environment_key
    from graphs import runtime

    config = state.config
    env_key = load_environment_key(Path(config.env_dir))

    def locate(hospital: str, rel: str) -> Path:
        return runtime.client_path(config, hospital, rel)

    subtasks = {
        "S1": score_s1(state.s1_answer, key),
        "C1": score_c1(state.clients, key),
        "S2": score_s2(state.s2_shown, state.s2_answer),
        "C2": score_c2(state.clients, key, env_key, locate),
        "C3": score_c3(state.clients, key, env_key, locate),
        "S3": score_s3(state.algorithm, key),
        "S4": score_s4(state.training, state.training_plan),
    }
    # the outcome is reported beside the sub-tasks, never folded into S4: an absolute "better than
    # chance" gate failed the oracle itself at real scale (MRI tumour presence at 3 rounds: the
    # trained model answers the majority class), so it would have made S4 unsolvable there
    outcome = score_outcome(config, state.training)
    return {"grader_version": GRADER_VERSION, "subtasks": subtasks, "outcome": outcome,
            "passed": sum(s["passed"] for s in subtasks.values())}


def score_outcome(config, training: Any) -> dict[str, Any]:
    """The trained model on the held-out test set (``eval.outcome``); never raises."""
    from eval.outcome import Outcome, evaluate_training
    from graphs import runtime

    t = training if isinstance(training, dict) else (training.model_dump() if training is not None else {})
    if not t.get("started"):
        return Outcome(note="no training").model_dump()
    try:
        return evaluate_training(Path(config.env_dir), config.task_id, runtime.server_path(config, "work/training")).model_dump()
    except Exception as exc:  # noqa: BLE001 - an unreadable model or test set is a note, never a crashed score
        return Outcome(note=f"not evaluated: {type(exc).__name__}: {str(exc)[:200]}").model_dump()


def score_run(state: Any) -> dict[str, Any]:
    """The workflow's scorer (its evaluation node calls it): the run scored against its task's key."""
    from graphs import runtime

    return score_state(state, runtime.task_key(state.config))
