"""Nothing an agent reads without judging content reveals the answer key (issue 22).

A small run of ``python -m scripts.probe_metadata``: all six tiny environments, fitted on three seeds and
scored on five others that no tuning used. At tiny scale a field of pure noise passes C1 by a
threshold in about 5-8 % of held-out task instances (three to five datasets per environment), so the
10 % bound is close to chance: a tell shows as far more (image counts passed 75 % before issue 22). The script's default sweep is larger; its figures are in
the README's validity section.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from environments.concepts import ENVIRONMENTS
from scripts import probe_metadata as pm

FIT_SEEDS = [61, 62, 63]
TEST_SEEDS = [71, 72, 73, 74, 75]


@pytest.fixture(scope="module")
def probe(tmp_path_factory: pytest.TempPathFactory, data_dir: Path | None) -> dict:
    out = tmp_path_factory.mktemp("probe")
    fit = pm.build_and_observe(list(ENVIRONMENTS), "tiny", FIT_SEEDS, data_dir, out / "fit")
    test = pm.build_and_observe(list(ENVIRONMENTS), "tiny", TEST_SEEDS, data_dir, out / "test")
    return pm.probe(fit, test)


def _strongest(fields: dict[str, float]) -> tuple[str, float]:
    return max(fields.items(), key=lambda kv: abs(kv[1] - 0.5))


def test_nuisance_fields_do_not_predict_relevance(probe: dict) -> None:
    rel = probe["relevance"]
    assert rel["positives"] >= 20 and rel["n"] - rel["positives"] >= 10, rel
    field, value = _strongest(rel["fields"])
    assert rel["auc"] <= 0.6, f"relevance readable from metadata: AUC {rel['auc']}; strongest field {field} ({value})"
    assert abs(value - 0.5) <= 0.15, f"field {field} alone ranks relevant datasets with AUC {value}"


def test_nuisance_fields_do_not_predict_injected_files(probe: dict) -> None:
    inj = probe["injected"]
    assert inj["positives"] >= 50, inj
    field, value = _strongest(inj["fields"])
    assert inj["auc"] <= 0.6, f"injected files readable from metadata: AUC {inj['auc']}; strongest field {field} ({value})"
    assert abs(value - 0.5) <= 0.1, f"field {field} alone ranks injected files with AUC {value}"


def test_no_single_field_threshold_passes_c1(probe: dict) -> None:
    assert probe["instances"]["test"] >= 50, probe["instances"]
    field, best = max(probe["threshold_rules"].items(), key=lambda kv: kv[1]["test_rate"])
    assert best["test_rate"] <= 0.10, f"field {field}: rule {best['rule']} passes C1 in {best['test_rate']:.0%} of held-out instances"


def test_corrupt_file_is_not_the_newest_more_often_than_chance(probe: dict) -> None:
    newest = probe["corrupt_newest"]
    assert newest["datasets"] >= 30, newest
    # a binomial count: more than three standard deviations above its expectation is no chance
    bound = newest["chance"] + 3 * math.sqrt(newest["chance"]) + 1
    assert newest["newest"] <= bound, f"field mtime: corrupt file newest in {newest['newest']} datasets, chance {newest['chance']}"


def test_probe_sees_a_metadata_tell(tmp_path: Path) -> None:
    """The probe is able to fail: a field that carries the label is found and named."""
    rows = [{"relevant": i % 2 == 0, "tell": float(i % 2 == 0) + 0.01 * i, "noise": float((i * 7) % 5)}
            for i in range(40)]
    result = pm.classifier_auc(rows[:20], rows[20:], ("tell", "noise"), "relevant")
    assert result["auc"] > 0.9 and _strongest(result["fields"])[0] == "tell"
