"""The report's statistics on synthetic results files: run-to-run SE, bootstrap CI over task
instances, pass^k with k = runs, the grader-version guard, and per-run sampling seeds."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from eval.report import bootstrap_ci, format_se, leaderboard, summarise, write_reports
from eval.scoring import GRADER_VERSION, SUBTASKS
from eval.store import RESULTS, ResultStore, RunKey, RunResult

REPO = Path(__file__).resolve().parents[1]


def _result(task: str, run: int, passed: int, version: str = GRADER_VERSION, env: str = "xray") -> RunResult:
    """A run of ``task`` that passes its first ``passed`` sub-tasks."""
    key = RunKey(model="m", environment=env, task=task, guidance="fine", mode="e2e", run=run)
    return RunResult(key=key, grader_version=version, thread_id=f"{task}.{run}",
                     subtasks={s: i < passed for i, s in enumerate(SUBTASKS)}, sampling_seed=run, temperature=0.0)


def _write(folder: Path, results: list[RunResult]) -> Path:
    store = ResultStore(folder)
    for r in results:
        store.append(r)
    return folder


def _board(folder: Path) -> dict:
    [row] = leaderboard(ResultStore(folder).load(GRADER_VERSION))
    return row


def test_se_is_zero_when_repeats_are_identical_although_tasks_differ(tmp_path):
    # task a passes all 7 every run, task b none: a large spread across tasks, none across repeats
    folder = _write(tmp_path, [_result(t, r, 7 if t == "a" else 0) for t in ("a", "b") for r in (1, 2, 3)])
    row = _board(folder)
    assert row["overall"] == 50.0
    assert row["se_runs"] == 0.0 and row["run_sd"] == 0.0
    assert row["instances"] == 2 and row["k"] == 3 and row["runs"] == 6
    assert row["ci_low"] < row["overall"] < row["ci_high"]  # the spread across tasks is in the CI, not the SE


def test_se_is_positive_when_repeats_differ(tmp_path):
    folder = _write(tmp_path, [_result("a", 1, 7), _result("a", 2, 0), _result("b", 1, 3), _result("b", 2, 3)])
    row = _board(folder)
    assert row["overall"] == pytest.approx(100 * (3.5 + 3) / 2 / 7, abs=0.01)
    # pooled within-instance variance: ((50)^2 * 2 + 0) / (1 + 1) points^2; SE = sqrt(var * (1/2 + 1/2)) / 2
    var = 2 * 50.0 ** 2 / 2
    assert row["se_runs"] == pytest.approx((var * 1.0) ** 0.5 / 2, abs=0.01)
    assert row["se_runs"] > 0


def test_one_task_on_environments_of_two_seeds_is_two_instances_not_two_repeats(tmp_path):
    """Results folders of different environment seeds reported together: no run-to-run SE is made
    up from the differences between environments."""
    a, b = _result("a", 1, 7), _result("a", 1, 0)
    a.env_seed, b.env_seed = 2026, 2027
    folders = [_write(tmp_path / "seed2026", [a]), _write(tmp_path / "seed2027", [b])]
    [row] = leaderboard([r for f in folders for r in ResultStore(f).load(GRADER_VERSION)])
    assert row["instances"] == 2 and row["k"] == 1 and row["se_runs"] is None
    assert row["overall"] == 50.0


def test_one_run_per_instance_has_no_se(tmp_path):
    folder = _write(tmp_path, [_result("a", 1, 7), _result("b", 1, 0)])
    row = _board(folder)
    assert row["se_runs"] is None and format_se(row) == "n/a (1 run)"
    assert row["k"] == 1 and row["pass^k"] == 0.5
    markdown = (write_reports(folder)["markdown"]).read_text()
    assert "n/a (1 run)" in markdown and "are noise" in markdown


def test_bootstrap_ci_contains_the_mean_and_is_deterministic(tmp_path):
    values = [0.0, 14.29, 42.86, 100.0, 57.14, 71.43, 28.57]
    mean = sum(values) / len(values)
    first, second = bootstrap_ci(values), bootstrap_ci(values)
    assert first == second
    assert first[0] < mean < first[1]
    assert bootstrap_ci([50.0]) is None  # one instance: no interval
    folder = _write(tmp_path, [_result(t, 1, p) for t, p in zip("abcdefg", (0, 1, 3, 7, 4, 5, 2))])
    assert _board(folder) == _board(folder)
    row = _board(folder)
    assert row["ci_low"] <= row["overall"] <= row["ci_high"]
    assert row["ci_halfwidth"] == pytest.approx((row["ci_high"] - row["ci_low"]) / 2, abs=0.01)


def test_pass_hat_k_uses_k_equal_to_the_runs(tmp_path):
    # instance a: all 7 pass in 3 of 3 runs; instance b: in 2 of 3 (its third run passes 6)
    folder = _write(tmp_path, [_result("a", r, 7) for r in (1, 2, 3)]
                    + [_result("b", 1, 7), _result("b", 2, 7), _result("b", 3, 6)])
    row = _board(folder)
    assert row["k"] == 3
    assert row["pass^k"] == 0.5
    assert row["pass^k_S1"] == 1.0 and row["pass^k_S4"] == 0.5
    [env_row] = summarise(ResultStore(folder).load(GRADER_VERSION))
    assert env_row["pass^k"] == 0.5 and env_row["k"] == 3


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(REPO / ".venv" / "bin" / "fedagentbench"), *args], cwd=REPO, capture_output=True,
                          text=True, timeout=300)


def test_report_refuses_results_of_an_older_grader(tmp_path):
    old = "0" if GRADER_VERSION != "0" else "old"
    _write(tmp_path, [_result("a", r, 7, version=old) for r in (1, 2, 3)])
    proc = _cli("report", str(tmp_path))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    message = proc.stderr.strip()
    assert len(message.splitlines()) == 1
    assert f"grader version {old}" in message and f"version {GRADER_VERSION}" in message
    assert "3 results lines" in message and "fedagentbench bench" in message and "--out" in message


def test_report_warns_about_older_lines_and_reports_the_current_ones(tmp_path):
    old = "0" if GRADER_VERSION != "0" else "old"
    _write(tmp_path, [_result("a", 1, 7, version=old), _result("b", 1, 7, version=old), _result("a", 1, 5)])
    proc = _cli("report", str(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ignored 2 results lines" in proc.stderr and f"grader version {old}" in proc.stderr
    assert "1 of those runs were re-run" in proc.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [r["runs"] for r in summary["rows"]] == [1]
    assert summary["leaderboard"][0]["overall"] == pytest.approx(100 * 5 / 7, abs=0.01)


def _fake_run_task(seen: list):
    """Stands in for graphs.run.run_task: records the RunConfig, returns a scored final state."""

    def run_task(config, db, thread_id=None, progress=None, **hooks):  # hooks: ask, scorer, on_end
        seen.append(config)
        return {"config": config.model_dump(), "agents": [], "errors": [],
                "scores": {"grader_version": GRADER_VERSION, "passed": 7,
                           "subtasks": {s: {"passed": True} for s in SUBTASKS}}}

    return run_task


def test_temperature_and_per_run_seeds_reach_the_runs_and_the_results(tmp_path, monkeypatch):
    import eval.bench as bench
    import graphs.run
    from eval.cli import _bench
    from fedagentbench_cli import build_parser
    from fedagentbench_settings import from_args

    seen: list = []
    monkeypatch.setattr(graphs.run, "run_task", _fake_run_task(seen))
    monkeypatch.setattr(bench, "ensure_environments", lambda spec, progress=None: tmp_path / "envs")
    out = tmp_path / "out"
    argv = ["bench", "--model", "heuristic", "--env", "xray", "--guidance", "fine", "--runs", "3",
            "--temperature", "0.7", "--out", str(out)]
    args = build_parser().parse_args(argv)
    assert from_args(args, "bench").temperature == 0.7 and args.runs == 3
    assert _bench(args) == 0

    lines = [json.loads(line) for line in (out / RESULTS).read_text().splitlines()]
    tasks = {line["key"]["task"] for line in lines}
    assert len(lines) == 3 * len(tasks)
    assert {line["temperature"] for line in lines} == {0.7}
    for task in tasks:
        seeds = sorted(line["sampling_seed"] for line in lines if line["key"]["task"] == task)
        assert seeds == [1, 2, 3]  # a distinct seed per repeat
    assert {c.temperature for c in seen} == {0.7}
    assert sorted({c.seed for c in seen}) == [1, 2, 3]
    assert json.loads((out / "manifest.json").read_text())["settings"]["temperature"] == 0.7

    seen.clear()  # the same command again: everything finished, nothing runs
    assert _bench(build_parser().parse_args(argv)) == 0
    assert seen == []
    with pytest.raises(ValueError, match="temperature"):  # other sampling settings into the same folder
        _bench(build_parser().parse_args([*argv[:-4], "--temperature", "0.2", "--out", str(out)]))


def test_run_one_gives_each_repeat_its_own_seed(tmp_path, monkeypatch):
    import graphs.run
    from eval.bench import BenchSpec, run_one

    seen: list = []
    monkeypatch.setattr(graphs.run, "run_task", _fake_run_task(seen))
    spec = BenchSpec(model="random", environments=["xray"], runs=2, seed=5, temperature=1.0, out=tmp_path)
    results = [run_one(spec, RunKey(model="random", environment="xray", task="t", guidance="goal", mode="e2e",
                                    run=run), tmp_path) for run in (1, 2)]
    assert [r.sampling_seed for r in results] == [6, 7]
    assert [c.seed for c in seen] == [6, 7] and all(c.temperature == 1.0 for c in seen)
    assert len({c.run_id for c in seen}) == 2


def test_the_temperature_and_seed_reach_the_chat_clients(tmp_path, monkeypatch):
    from graphs.runtime import chat_model
    from graphs.state import RunConfig

    (tmp_path / "environment.json").write_text("{}")
    monkeypatch.setenv("OPENAI_API_KEY", "not-used")
    for spec in ("openai:gpt-4.1-mini", "ollama:qwen2.5"):
        model = chat_model(RunConfig(env_dir=str(tmp_path), task_id="t", model=spec, temperature=0.7, seed=3))
        assert (model.temperature, model.seed) == (0.7, 3)


def test_fedagentbench_run_takes_temperature_and_sampling_seed():
    from fedagentbench_cli import build_parser
    from fedagentbench_settings import from_args

    args = build_parser().parse_args(["run", "--env", "e", "--task", "t", "--temperature", "0.5",
                                      "--sampling-seed", "4"])
    settings = from_args(args, "run")
    assert (settings.temperature, settings.sampling_seed) == (0.5, 4)


def test_fedagentbench_run_passes_temperature_and_sampling_seed_to_the_run_config(tmp_path, monkeypatch):
    import graphs.run
    from fedagentbench_cli import main

    env = tmp_path / "xray"
    (env / "server" / "tasks").mkdir(parents=True)
    (env / "environment.json").write_text("{}")
    (env / "server" / "tasks" / "t.json").write_text("{}")
    seen: list = []
    monkeypatch.setattr(graphs.run, "run_task", _fake_run_task(seen))
    assert main(["run", "--env", str(env), "--task", "t", "--temperature", "0.5", "--sampling-seed", "4",
                 "--db", str(tmp_path / "c.sqlite")]) == 0
    assert [(c.temperature, c.seed) for c in seen] == [(0.5, 4)]
