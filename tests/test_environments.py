"""The simulated hospital environments: determinism, heterogeneity, answer keys, pools."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from environments.answer_key import HETEROGENEITY_KINDS, load_environment_key, load_task_key
from environments.builder import build_environment
from environments.concepts import ENVIRONMENTS
from environments.pools import REAL_POOL_FILES, ImagePool, native_shape
from environments.readers import ImageReadError, read_image
from environments.site import average_hash
from environments.tasks import tasks_for

from .conftest import REPO


def _tree_digest(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _hamming(a: str, b: str) -> int:
    return bin(int(a, 16) ^ int(b, 16)).count("1")


# --- determinism -------------------------------------------------------------------------------

@pytest.mark.parametrize("env", ["xray", "histopathology", "mri"])
def test_same_seed_gives_byte_identical_tree_and_other_seed_differs(env, tiny_envs, tmp_path, data_dir):
    build_environment(env, "tiny", 0, tmp_path / "again", data_dir)
    first, again = _tree_digest(tiny_envs / env), _tree_digest(tmp_path / "again" / env)
    assert first == again
    build_environment(env, "tiny", 1, tmp_path / "other", data_dir)
    other = _tree_digest(tmp_path / "other" / env)
    assert other != first
    assert other["answer_key/environment.json"] != first["answer_key/environment.json"]


# --- heterogeneity, recorded and real ----------------------------------------------------------

@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_every_heterogeneity_kind_occurs_at_small_scale(env, small_envs):
    key = load_environment_key(small_envs / env)
    missing = [kind for kind in HETEROGENEITY_KINDS if not key.heterogeneity.get(kind)]
    assert not missing, f"{env} lacks {missing}"
    formats = {f for d in key.datasets if d.relevant_to for f in d.formats}
    assert {"png", "jpeg", "dicom", "tiff"} <= formats
    if not native_shape(env)[1]:  # grey modalities also carry NIfTI volumes
        assert "nifti" in formats
    profiles = [h.profile for h in key.hospitals]
    assert len({p.size_factor for p in profiles}) > 1 and len({(p.gamma, p.gain) for p in profiles}) == len(profiles)


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_injected_issues_are_on_disk_as_recorded(env, small_envs):
    env_dir = small_envs / env
    key = load_environment_key(env_dir)
    on_disk = {p.relative_to(env_dir / "clients").as_posix() for p in (env_dir / "clients").rglob("*")
               if p.is_file() and p.name != "data_cards.json"}
    recorded = {f"{d.hospital}/{f.path}" for d in key.datasets for f in d.files}
    assert on_disk == recorded
    for ds in key.datasets:
        ws = env_dir / "clients" / ds.hospital
        hashes = {f.path: f.ahash for f in ds.files if f.ahash}
        for f in ds.files:
            path = ws / f.path
            if f.issue == "zero_byte":
                assert path.stat().st_size == 0
            if f.kind == "corrupt":
                with pytest.raises(ImageReadError):
                    read_image(path)
            elif f.kind == "image":
                pixels = read_image(path)
                assert pixels.dtype == np.uint8 and min(pixels.shape[:2]) >= 28
                if f.format != "jpeg":  # lossless formats give the recorded content back
                    assert _hamming(average_hash(pixels), f.ahash) <= 2, f.path
            if f.issue == "duplicate":
                assert _hamming(hashes[f.path], hashes[f.duplicate_of]) <= 8
                assert f.site_label == f.true_label
            if f.issue == "label_error":
                assert f.site_label != f.true_label and f.true_label in ds.local_classes
            if f.issue == "off_topic":
                # an unlabelled distractor's off-topic images carry no label, like its other images
                assert f.true_label is None and f.site_label in (ds.local_classes or [None])


def test_dicom_and_nifti_files_open_with_their_libraries(small_envs):
    import nibabel as nib
    import pydicom

    photometric, syntaxes, names = set(), set(), set()
    nifti = 0
    for env in ENVIRONMENTS:
        key = load_environment_key(small_envs / env)
        names |= {p.name for p in key.patients}
        for ds in key.datasets:
            for f in ds.files:
                path = small_envs / env / "clients" / ds.hospital / f.path
                if f.kind != "image":
                    continue
                if f.format == "dicom":
                    dcm = pydicom.dcmread(path)
                    assert dcm.pixel_array.shape[:2] == (dcm.Rows, dcm.Columns)
                    assert str(dcm.PatientName) in names and dcm.PatientID
                    photometric.add(dcm.PhotometricInterpretation)
                    syntaxes.add(dcm.file_meta.TransferSyntaxUID.name)
                elif f.format == "nifti":
                    volume = nib.load(str(path)).get_fdata()
                    assert volume.ndim == 3 and volume.shape[2] == 3
                    nifti += 1
    assert {"MONOCHROME1", "MONOCHROME2", "RGB"} <= photometric
    assert "RLE Lossless" in syntaxes and "Deflated Explicit VR Little Endian" in syntaxes
    assert syntaxes & {"Explicit VR Little Endian", "Implicit VR Little Endian"}
    assert nifti > 0


# --- answer keys --------------------------------------------------------------------------------

KEY_ONLY_WORDS = ("acceptable_algorithms", "label_mappings", "duplicate_of", "true_label", "ahash", "relevant_to")


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_nothing_of_the_answer_key_is_in_a_workspace(env, small_envs):
    env_dir = small_envs / env
    key_dir = (env_dir / "answer_key").resolve()
    for workspace in [*(env_dir / "clients").iterdir(), env_dir / "server"]:
        assert not key_dir.is_relative_to(workspace.resolve())
        for path in workspace.rglob("*"):
            if path.suffix.lower() in (".json", ".csv", ".txt"):
                text = path.read_text("utf-8", errors="replace")
                assert not any(word in text for word in KEY_ONLY_WORDS), path
    for task_file in (env_dir / "server" / "tasks").glob("*.json"):
        assert set(json.loads(task_file.read_text("utf-8"))) == {"task_id", "environment", "request"}


@pytest.mark.parametrize("scale", ["tiny", "small"])
@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_tasks_have_complete_answer_keys(env, scale, tiny_envs, small_envs):
    env_dir = (tiny_envs if scale == "tiny" else small_envs) / env
    key = load_environment_key(env_dir)
    tasks = tasks_for(env)
    assert len(tasks) >= 3
    for task in tasks:
        tk = load_task_key(env_dir, task.task_id)
        assert len(tk.approved_hospitals) >= 2 and len(tk.rejected_hospitals) >= 1
        assert tk.acceptable_algorithms
        for style in ("fine", "goal"):
            assert all(c in tk.requests[style] for c in task.target_classes)
        for hospital in tk.approved_hospitals:
            targets = set()
            for name in tk.relevant_datasets[hospital]:
                ds = key.dataset(hospital, name)
                mapping = tk.label_mappings[hospital][name]
                assert set(mapping) == set(ds.local_classes)
                clean = tk.clean_files[hospital][name]
                removed = {r.path for r in tk.removed_files[hospital][name]}
                assert {c.path for c in clean}.isdisjoint(removed)
                assert {c.path for c in clean} | removed == {f.path for f in ds.files}
                targets |= {c.target_class for c in clean if c.target_class}
            assert targets == set(task.target_classes), (task.task_id, hospital)
        for hospital in tk.rejected_hospitals:
            assert not tk.relevant_datasets[hospital]


def test_data_cards_describe_every_dataset_with_recorded_errata(small_envs):
    for env in ENVIRONMENTS:
        key = load_environment_key(small_envs / env)
        for hospital in key.hospitals:
            cards = json.loads((small_envs / env / "clients" / hospital.name / "data_cards.json").read_text("utf-8"))
            assert [c["dataset name"] for c in cards] == hospital.datasets
            for card in cards:
                ds = key.dataset(hospital.name, card["dataset name"])
                actual = sum(1 for f in ds.files if f.kind in ("image", "corrupt"))
                if "image_count_off" in ds.card_errata:
                    assert card["image_count"] != actual
                else:
                    assert card["image_count"] == actual
                assert ("label_file" in card) == bool(ds.label_file and "label_file_omitted" not in ds.card_errata)
                assert card["classes"] == ds.local_classes
                if ds.label_style == "numeric":
                    assert "classes.txt" in card["dataset description"]


# --- pools --------------------------------------------------------------------------------------

def test_real_pools_are_used_when_present(data_dir):
    if data_dir is None:
        pytest.skip("no real data directory on this machine (FEDAGENTBENCH_DATA or ../shared/datasets)")
    assert set(REAL_POOL_FILES) == set(ENVIRONMENTS) - {"histopathology"}
    for env in REAL_POOL_FILES:
        pool = ImagePool(env, 0, data_dir)
        assert pool.info.kind == "real" and pool.info.fallback_reason is None
    assert ImagePool("histopathology", 0, data_dir).info.kind == "procedural"


def test_corrupt_or_missing_pool_falls_back_with_a_reason(tmp_path, data_dir, monkeypatch):
    monkeypatch.delenv("FEDAGENTBENCH_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "empty-cache"))  # no fetched pools either
    assert "no real pools" in ImagePool("xray", 0).info.fallback_reason
    assert "does not exist" in ImagePool("xray", 0, tmp_path / "nowhere").info.fallback_reason
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "SHA256SUMS").write_text("0" * 64 + "  xray_pneumoniamnist_28.npz\n")
    assert "missing" in ImagePool("ultrasound", 0, bad).info.fallback_reason
    np.savez(bad / "xray_pneumoniamnist_28.npz", train_images=np.zeros((4, 28, 28), np.uint8))
    pool = ImagePool("xray", 0, bad)
    assert pool.info.kind == "procedural" and "checksum" in pool.info.fallback_reason
    summary = build_environment("xray", "tiny", 0, tmp_path / "out", bad)  # the build goes on
    assert summary.pool == "procedural" and "checksum" in summary.fallback_reason
    manifest = json.loads((tmp_path / "out" / "xray" / "environment.json").read_text())
    assert "checksum" in manifest["pool"]["fallback_reason"]


def test_real_images_are_never_shared_between_hospitals_or_datasets(small_envs, data_dir):
    if data_dir is None:
        pytest.skip("no real data directory on this machine")
    for env in ("xray", "mri"):
        key = load_environment_key(small_envs / env)
        seen: dict[str, str] = {}
        for ds in key.datasets:
            if ds.pixels != "real":
                continue
            for f in ds.files:
                if f.kind == "image" and f.issue not in ("duplicate", "off_topic"):
                    pixels = read_image(small_envs / env / "clients" / ds.hospital / f.path)
                    digest = hashlib.sha256(np.ascontiguousarray(pixels).tobytes()).hexdigest()
                    assert digest not in seen, f"{f.path} repeats {seen.get(digest)}"
                    seen[digest] = f"{ds.hospital}/{f.path}"


def _clean_dataset(env_dir: Path, task_id: str) -> tuple[np.ndarray, np.ndarray]:
    """Clean images of one task as 16x16 grey vectors with their target labels."""
    from PIL import Image

    tk = load_task_key(env_dir, task_id)
    xs, ys = [], []
    for hospital, datasets in tk.clean_files.items():
        for files in datasets.values():
            for f in files:
                if f.target_class is None:
                    continue
                img = read_image(env_dir / "clients" / hospital / f.path)
                grey = Image.fromarray(img).convert("L").resize((16, 16), Image.BILINEAR)
                xs.append(np.asarray(grey, np.float32).ravel() / 255.0)
                ys.append(tk.target_schema.classes.index(f.target_class))
    return np.stack(xs), np.asarray(ys)


@pytest.mark.parametrize("env,task_id", [("xray", "xray-pneumonia"), ("mri", "mri-tumour-type"),
                                         ("ultrasound", "us-breast-malignancy")])
def test_a_small_classifier_beats_chance_on_clean_images(env, task_id, small_envs):
    """The labels carry signal a classifier can learn: cross-validated balanced accuracy beats the
    same classifier on shuffled labels (a permutation test, 1 %). Balanced accuracy, because the
    classes are imbalanced; a permutation test, because folds are not independent trials (a binomial
    test on the rounded CV accuracy treated them so, and flipped with the seed on ultrasound)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, permutation_test_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = _clean_dataset(small_envs / env, task_id)
    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.05, max_iter=2000, class_weight="balanced"))
    score, shuffled, p_value = permutation_test_score(
        model, x, y, cv=StratifiedKFold(5, shuffle=True, random_state=0), scoring="balanced_accuracy",
        n_permutations=199, random_state=0)
    assert p_value < 0.01, (score, shuffled.mean(), p_value)  # above every one of the 199 shuffles


# --- commands -----------------------------------------------------------------------------------

def test_catalogue_command_lists_all_cards(capsys):
    from fedagentbench_cli import main

    assert main(["envs", "catalogue", "--json"]) == 0
    cards = json.loads(capsys.readouterr().out)
    assert len(cards) == 201 and {c["environment"] for c in cards} == set(ENVIRONMENTS)
    assert main(["envs", "catalogue", "--modality", "xray"]) == 0
    assert "Kermany" in capsys.readouterr().out


def test_show_command_and_clear_errors(tiny_envs, tmp_path, capsys):
    from fedagentbench_cli import main

    assert main(["envs", "show", str(tiny_envs / "xray")]) == 0
    out = capsys.readouterr().out
    assert "hospital_01" in out and "heterogeneity kinds present" in out
    assert main(["envs", "show", str(tmp_path / "missing")]) == 2
    assert "no environment" in capsys.readouterr().err
    foreign = tmp_path / "out" / "xray"
    foreign.mkdir(parents=True)
    (foreign / "precious.txt").write_text("keep me")
    assert main(["envs", "build", "--modality", "xray", "--out", str(tmp_path / "out")]) == 2
    assert (foreign / "precious.txt").read_text() == "keep me"
    with pytest.raises(SystemExit):
        main(["envs", "build", "--modality", "dental"])


def test_cli_help_imports_no_heavy_library():
    code = ("import sys, fedagentbench_cli; fedagentbench_cli.build_parser(); "
            "print([m for m in ('torch', 'monai', 'flwr', 'ray', 'langgraph', 'numpy', 'pandas') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_acceptable_algorithms_match_the_registry_and_each_can_train():
    from environments.tasks import REQUIREMENT_ALGORITHMS
    from fl.registry import query

    executable = {a.name for a in query(executable=True)}
    for cue, names in REQUIREMENT_ALGORITHMS.items():
        assert sorted(a.name for a in query(cue=cue)) == sorted(names), cue
        assert executable & set(names), f"no executable algorithm for requirement {cue}"
