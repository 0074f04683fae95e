"""Measure the skyline's clinical knowledge (agents/skyline_knowledge.py) on built environments.

A measurement, not a fit: it imports nothing of the environment builder. It reads built environments
from disk as an agent would see them (the server's task requests, each hospital's data_cards.json)
and scores the skyline's decisions against the answer-key files written beside them:

* ``parse_request`` on both request styles against the key's requirements (modality, target classes,
  requirement cue);
* ``dataset_matches`` on every data card of every hospital against the key's relevant datasets (C1);
* ``map_class`` on every local class of every relevant dataset against the key's label mapping (C3);
* ``requirement_of`` (S3's cue) on phrasings the environment never writes (``--heldout``,
  scripts/heldout_requirement_phrasings.json): the rate on words the skyline was not developed on.

Two modes: "request" passes on the modality and organ the user request names; "broadcast" only what
the C1 / C3 prompts say (organ, targets, note; C1's also the modality), as agents/skyline.py calls them.

    .venv/bin/python -m scripts.check_skyline_knowledge --seeds 5000-5009 [--scale tiny] [--quiet]
    .venv/bin/python -m scripts.check_skyline_knowledge --env /path/to/built/xray [...]
    .venv/bin/python -m scripts.check_skyline_knowledge --heldout

With ``--seeds`` the environments are built by the ``fedagentbench envs build`` command (a separate
process) under ``--out`` (default: a temporary folder).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from agents.skyline_knowledge import dataset_matches, map_class, parse_request, requirement_of

HELDOUT = Path(__file__).with_name("heldout_requirement_phrasings.json")

MODES = ("request", "broadcast")


@dataclass
class Tally:
    """Decisions checked and the ones that disagree with the key, per kind."""

    ok: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    total: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    mismatches: list[str] = field(default_factory=list)

    def add(self, kind: str, ok: bool, detail: str) -> None:
        self.total[kind] += 1
        self.ok[kind] += ok
        if not ok:
            self.mismatches.append(f"{kind}: {detail}")


def _json(path: Path):
    return json.loads(path.read_text("utf-8"))


def check_environment(env_dir: Path, mode: str, tally: Tally) -> None:
    """Score every task of one built environment into ``tally``."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}")
    env_key = _json(env_dir / "answer_key" / "environment.json")
    published = {(d["hospital"], d["name"]): d.get("local_to_published", {}) for d in env_key["datasets"]}
    cards = {p.parent.name: _json(p) for p in sorted((env_dir / "clients").glob("*/data_cards.json"))}
    tag = f"{env_key['environment']}/seed {env_key['seed']}"
    for task_file in sorted((env_dir / "server" / "tasks").glob("*.json")):
        task = _json(task_file)
        key = _json(env_dir / "answer_key" / "tasks" / task_file.name)
        want = key["requirements"]
        facts = None
        for guidance, text in task["request"].items():
            got = parse_request(json.dumps({"task_id": task["task_id"], "request": text}))
            for field_name in ("modality", "target_classes", "requirement"):
                tally.add(f"request.{field_name}", got[field_name] == want[field_name],
                          f"{tag} {task['task_id']} ({guidance}): {got[field_name]!r}, key {want[field_name]!r}")
            facts = facts or got
        assert facts is not None
        targets, note, organ = facts["target_classes"], facts["class_note"], facts["body_part"]
        passed = {"modality": facts["modality"], "body_part": organ} if mode == "request" else {"body_part": organ}
        for hospital, entries in cards.items():
            relevant = set(key["relevant_datasets"].get(hospital, []))
            for card in entries:
                name = card["dataset name"]
                got = dataset_matches(card, facts["modality"], targets, note, body_part=organ)
                tally.add("dataset_matches", got == (name in relevant),
                          f"{tag} {task['task_id']} {hospital}/{name}: {got}, key {name in relevant}; "
                          f"classes {card.get('classes')}")
                gold = key["label_mappings"].get(hospital, {}).get(name)
                if gold is None:
                    continue
                for local, target in gold.items():
                    got_map = map_class(local, card, targets, note, **passed)
                    pub = published.get((hospital, name), {}).get(local, local)
                    tally.add("map_class", got_map == target,
                              f"{tag} {task['task_id']} {name} {local!r} [{pub!r}]: {got_map}, key {target}")


def heldout_rates(path: Path = HELDOUT) -> dict[str, tuple[int, int, list[str]]]:
    """Per held-out set: phrasings whose cue the skyline reads right, how many, and the misses."""
    data = _json(path)
    out = {}
    for name, by_cue in data.items():
        if name.startswith("_"):
            continue
        misses = [f"{cue} -> {requirement_of(text)}: {text}" for cue, texts in by_cue.items() for text in texts
                  if requirement_of(text) != cue]
        total = sum(len(texts) for texts in by_cue.values())
        out[name] = (total - len(misses), total, misses)
    return out


def _seeds(text: str) -> list[int]:
    out: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out += list(range(int(lo), int(hi or lo) + 1))
    return out


def build(seeds: list[int], scale: str, out: Path) -> list[Path]:
    """Build every environment for each seed with the CLI (another process: no builder import here)."""
    cli = Path(sys.executable).with_name("fedagentbench")
    dirs = []
    for seed in seeds:
        target = out / f"seed{seed}"
        if not (target / "xray" / "environment.json").is_file():
            subprocess.run([str(cli), "envs", "build", "--scale", scale, "--seed", str(seed), "--out", str(target)],
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        dirs += sorted(p.parent for p in target.glob("*/environment.json"))
    return dirs


def report(mode: str, tally: Tally, quiet: bool) -> None:
    print(f"\n== mode {mode} ==")
    for kind in sorted(tally.total):
        ok, total = tally.ok[kind], tally.total[kind]
        print(f"{kind:28} {100.0 * ok / total:6.2f}% ({ok}/{total})")
    print(f"mismatches: {len(tally.mismatches)}")
    if not quiet:
        for line in tally.mismatches:
            print(f"  {line}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", action="append", type=Path, default=[], help="a built environment folder")
    parser.add_argument("--seeds", help="build these seeds first, e.g. 5000-5009 or 1,2,3")
    parser.add_argument("--scale", default="tiny")
    parser.add_argument("--out", type=Path, help="where --seeds builds go (default: a temporary folder)")
    parser.add_argument("--mode", choices=MODES, action="append", help="default: both")
    parser.add_argument("--quiet", action="store_true", help="totals only")
    parser.add_argument("--heldout", action="store_true", help="S3 cue rate on held-out requirement phrasings")
    args = parser.parse_args(argv)
    if args.heldout:
        for name, (ok, total, misses) in heldout_rates().items():
            print(f"held-out {name}: requirement cue right in {ok}/{total} ({100.0 * ok / total:.1f} %)")
            for line in ([] if args.quiet else misses):
                print(f"  {line}")
        if not (args.env or args.seeds):
            return 0
    with tempfile.TemporaryDirectory(prefix="skyline-knowledge-") as tmp:
        dirs = list(args.env)
        if args.seeds:
            dirs += build(_seeds(args.seeds), args.scale, args.out or Path(tmp))
        if not dirs:
            parser.error("give --env or --seeds")
        failed = False
        for mode in args.mode or MODES:
            tally = Tally()
            for env_dir in dirs:
                check_environment(env_dir, mode, tally)
            report(mode, tally, args.quiet)
            failed |= bool(tally.mismatches)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
