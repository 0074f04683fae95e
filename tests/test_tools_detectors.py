"""The detectors, measured on generated environments and on controlled synthetic cases."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from environments import formats
from environments.answer_key import load_environment_key
from scripts import bench_detectors
from tools import detectors


@pytest.fixture(scope="module")
def small_two(tmp_path_factory: pytest.TempPathFactory, data_dir: Path | None) -> Path:
    """xray and mri at small scale (a few seconds; the full benchmark covers all six)."""
    from environments.builder import build_environment

    out = tmp_path_factory.mktemp("small_two")
    for env in ("xray", "mri"):
        build_environment(env, "small", 0, out, data_dir)
    return out


@pytest.fixture(scope="module")
def results(small_two: Path) -> dict:
    return bench_detectors.run(small_two, ["label_errors"])


def test_benchmark_meets_targets_on_xray_and_mri(results: dict) -> None:
    # off-topic precision 0.85 (was 0.9): since issue 22 an injected image goes through the site's own
    # acquisition profile and encoder, so only its content tells it apart (MRI small seed 0: 0.897)
    for env, by_det in results.items():
        for det, (p_min, r_min) in {"duplicates": (0.85, 0.8), "off_topic": (0.85, 0.8)}.items():
            c = by_det[det]
            precision, recall = bench_detectors.metrics(c)
            assert precision >= p_min and recall >= r_min, (env, det, c)
        assert by_det["label_errors"]["positives"] > 0  # measured, reported, no target


def _grey_image(rng: np.random.Generator, size: int = 48) -> np.ndarray:
    from scipy import ndimage

    field = ndimage.gaussian_filter(rng.standard_normal((size, size)), 3)
    return np.clip(128 + 60 * field / field.std(), 0, 255).astype(np.uint8)


def test_near_duplicates_survive_format_and_intensity_changes(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    images = [_grey_image(rng) for _ in range(12)]
    paths = []
    for i, img in enumerate(images):
        paths.append(tmp_path / f"img_{i:02d}.png")
        formats.write_png(paths[-1], img)
    copy = np.clip(images[3].astype(float) * 1.03 + rng.normal(0, 2, images[3].shape), 0, 255).astype(np.uint8)
    formats.write_jpeg(tmp_path / "z_copy.jpg", copy, 80)
    style = formats.DicomStyle("MONOCHROME1", "rle", 16, -1024.0, False)
    patient = formats.Patient("Doe^Jane", "X1234567", "19700101", "F")
    formats.write_dicom(tmp_path / "z_copy2.dcm", images[7], patient=patient, style=style, modality="CR",
                        institution="Test", body_part="chest", uid_seed="t", study_date="20200101",
                        series_description="t")
    files = sorted(tmp_path.iterdir())
    data = detectors.load_images(files)
    found = {(data.files[k].name, data.files[d].name) for k, d, _ in detectors.near_duplicates(data)}
    assert found == {("img_03.png", "z_copy.jpg"), ("img_07.png", "z_copy2.dcm")}


def test_off_topic_flags_grey_images_in_a_colour_dataset(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    for i in range(20):
        rgb = np.stack([_grey_image(rng)] * 3, -1).astype(float) * np.array([1.0, 0.7, 0.5])
        formats.write_png(tmp_path / f"c{i:02d}.png", rgb.astype(np.uint8))
    formats.write_png(tmp_path / "grey.png", np.stack([_grey_image(rng)] * 3, -1))
    data = detectors.load_images(sorted(tmp_path.iterdir()))
    assert [data.files[i].name for i, _, _ in detectors.off_topic(data)] == ["grey.png"]


@pytest.mark.parametrize("method, probabilities", [("cleanlab", "features"), ("threshold", "features"),
                                                   ("cleanlab", "cnn")])
def test_label_errors_found_where_classes_are_separable(tmp_path: Path, method: str, probabilities: str,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import multiprocessing

    def no_fork(*args, **kwargs):  # a forked pool deadlocks in the threaded agent processes
        raise AssertionError("label_errors must not fork a multiprocessing pool")

    monkeypatch.setattr(multiprocessing, "Pool", no_fork)
    rng = np.random.default_rng(3)
    labels = []
    for i in range(40):
        img = _grey_image(rng, 32)
        if i % 2:  # class "b": a bright square in the centre
            img[10:22, 10:22] = 250
        formats.write_png(tmp_path / f"i{i:02d}.png", img)
        labels.append("b" if i % 2 else "a")
    labels[4], labels[9] = "b", "a"  # two wrong labels
    data = detectors.load_images(sorted(tmp_path.iterdir()))
    found = detectors.label_errors(data, labels, method=method, probabilities=probabilities)
    flagged = {i for i, _, _ in found}
    assert {4, 9} <= flagged and len(flagged) <= 4
    suggested = {i: s for i, s, _ in found}
    assert suggested[4] == "a" and suggested[9] == "b"  # the class the image shows


def test_detectors_handle_tiny_and_unreadable_inputs(tmp_path: Path) -> None:
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "bad.dcm").write_bytes(b"not a dicom")
    formats.write_png(tmp_path / "one.png", _grey_image(np.random.default_rng(0)))
    data = detectors.load_images(sorted(tmp_path.iterdir()))
    assert len(data.files) == 1 and len(data.failed) == 2
    assert detectors.near_duplicates(data) == [] and detectors.off_topic(data) == []
    assert detectors.label_errors(data, ["a"]) == []


def test_environment_keys_match_benchmark_counts(small_two: Path, results: dict) -> None:
    """The benchmark counts injected issues exactly as the key records them."""
    for env, by_det in results.items():
        key = load_environment_key(small_two / env)
        for kind, det in (("duplicate", "duplicates"), ("off_topic", "off_topic"), ("label_error", "label_errors")):
            n = sum(1 for d in key.datasets if d.relevant_to for f in d.files if f.issue == kind)
            assert by_det[det]["positives"] == n


def test_c2_small_count_rule_allows_one_miss_from_three_items_on() -> None:
    """One missed near-duplicate group or off-topic image is no C2 failure once three or more were
    injected; with one or two, nothing may be missed (finding nothing never passes)."""
    from eval.scoring import c2_misses_allowed

    assert [c2_misses_allowed(n) for n in (0, 1, 2, 3, 4, 9, 10, 15, 20)] == [0, 0, 0, 1, 1, 1, 2, 3, 4]


def test_confident_learning_is_safe_when_two_agents_clean_at_once():
    """cleanlab keeps each call's arrays in module globals (n_jobs=1): two C2 agents of one process
    (parallel clients, ``bench --concurrency``) once crashed each other's detect_data_issues, about
    1 call in 300. Through our helper, 2 x 1,500 concurrent calls all succeed and agree with a call
    made alone."""
    import threading

    from tools.detectors import confident_learning_issues

    errors: list[str] = []
    wrong: list[int] = []

    def work(n: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        for _ in range(1500):
            y = np.repeat([0, 1], n // 2)
            probs = rng.dirichlet([1, 1], size=n)
            try:
                got = confident_learning_issues(y, probs)
            except Exception as exc:  # noqa: BLE001 - the race shows as assorted numpy errors
                errors.append(f"{type(exc).__name__}: {exc}")
                continue
            if len(got) != n:
                wrong.append(n)

    threads = [threading.Thread(target=work, args=(n, s)) for n, s in ((10, 1), (20, 2))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and wrong == []
