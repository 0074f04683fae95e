"""What an agent can read, checked for the answer key on a built environment folder.

Prints, over the relevant datasets: the precision of "flag the last k file names" and "flag the last
k label-file rows" (k = injected files) against the base rate, the mean name rank of injected files
(0.5 = no tell), corrupt files' size against real files of their format, and any file under a client
or server workspace whose name or text carries key material.

    python -m scripts.check_leaks runs/seed9890/oracle/envs/tiny-seed9890
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path, PurePosixPath

import numpy as np

from environments.answer_key import IMAGE_KINDS, label_file_order, load_environment_key, name_stem

#: text in a workspace file that only the answer key writes
KEY_WORDS = ('"issue"', '"duplicate_of"', '"label_error"', '"true_label"', "answer_key")


def workspace_leaks(env_dir: Path) -> list[str]:
    """Files under the clients' and the server's workspaces whose name or text carries key material."""
    leaks = []
    for ws in [*(env_dir / "clients").iterdir(), env_dir / "server"]:
        for p in ws.rglob("*"):
            low = p.name.lower()
            # whole words only: "Monkeypox" (a real dataset's name) holds "key" but gives nothing away
            if re.search(r"(?<![a-z])(answer|gold|key|input_cleaned|input_harmonised)(?![a-z])", low):
                leaks.append(str(p))
            if p.is_file() and p.suffix in (".json", ".csv", ".txt", ".md") and p.stat().st_size < 2_000_000:
                text = p.read_text("utf-8", "ignore")
                if any(w in text for w in KEY_WORDS):
                    leaks.append(f"{p}: key words")
    return leaks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path, help="a folder of built environments (one sub-folder each)")
    args = parser.parse_args(argv)
    files = injected = 0
    name_hits = row_hits = row_flag = 0
    ranks: list[float] = []
    size_z: list[float] = []
    leaks: list[str] = []
    for env_dir in sorted(p for p in args.root.iterdir() if p.is_dir()):
        key = load_environment_key(env_dir)
        for ds in key.datasets:
            if not ds.relevant_to:
                continue
            ws = env_dir / "clients" / ds.hospital
            images = [f for f in ds.files if f.kind in IMAGE_KINDS]
            bad = {f.path for f in images if f.issue != "none"}
            k = len(bad)
            if not k:
                continue
            files += len(images)
            injected += k
            ordered = sorted(images, key=lambda f: (PurePosixPath(f.path).name, f.path))
            name_hits += sum(f.path in bad for f in ordered[-k:])
            ranks += [i / (len(ordered) - 1) for i, f in enumerate(ordered) if f.issue != "none"]
            rows = label_file_order(ws, ds)
            if rows:
                stems = {name_stem(PurePosixPath(f.path).name): f for f in images}
                flagged = [stems.get(name_stem(r)) for r in rows[-k:]]
                row_flag += k
                row_hits += sum(f is not None and f.path in bad for f in flagged)
            # corrupt files sized like real files of the dataset
            for f in images:
                if f.issue == "corrupt":
                    real = [(ws / g.path).stat().st_size for g in images if g.issue == "none" and g.format == f.format]
                    size_z.append((ws / f.path).stat().st_size / np.median(real))
        # nothing of the key under any workspace (clients and server)
        leaks += workspace_leaks(env_dir)
    if not files:
        print(f"no relevant dataset with injected files under {args.root}")
        return 1
    base = injected / files
    print(f"datasets' images {files}, injected {injected} (base rate {base:.3f})")
    print(f"'last k by name' precision {name_hits / injected:.3f}; 'last k label-file rows' precision "
          f"{row_hits / max(1, row_flag):.3f} (n={row_flag})")
    print(f"mean name rank of injected files {np.mean(ranks):.3f} (0.5 = no tell)")
    if size_z:
        print(f"corrupt file size / median real file of its format: {min(size_z):.2f}-{max(size_z):.2f} over "
              f"{len(size_z)} files")
    print("key material or key words readable in workspaces:", leaks[:5] or "none")
    return 0


if __name__ == "__main__":
    sys.exit(main())
