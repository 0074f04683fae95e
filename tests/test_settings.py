"""One settings model for ``run``, ``bench`` and ``federate run`` (fedagentbench_settings): the
FEDAGENTBENCH_* variables as sources, one line for a bad value, one meaning per option name."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from fedagentbench_cli import build_parser, main
from fedagentbench_settings import NOT_SETTINGS, SettingsError, from_args, variables

REPO = Path(__file__).resolve().parents[1]
SHARED = ("--model", "--sampling-seed", "--rounds", "--max-requests")
MODEL_OPTIONS = ("--temperature", "--budget", "--timeout", "--retries", "--no-submit-tool", "--cache")


def _settings(argv: list[str], command: str, environ: dict[str, str] | None = None):
    return from_args(build_parser().parse_args(argv), command, environ or {})


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fedagentbench_cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120, check=False, env={**os.environ, **(env or {})})


def test_a_variable_is_the_source_of_its_setting_and_the_option_wins() -> None:
    run = ["run", "--env", "e", "--task", "t"]
    assert _settings(run, "run").max_requests == 0
    assert _settings(run, "run", {"FEDAGENTBENCH_MAX_REQUESTS": "4"}).max_requests == 4
    assert _settings([*run, "--max-requests", "2"], "run", {"FEDAGENTBENCH_MAX_REQUESTS": "4"}).max_requests == 2
    bench = _settings(["bench"], "bench", {"FEDAGENTBENCH_DATA": "/pools", "FEDAGENTBENCH_WARM_TRAINING": "false",
                                           "FEDAGENTBENCH_RETRY_BASE_S": "0"})
    assert (bench.data_dir, bench.warm_training, bench.retry_base_s) == (Path("/pools"), False, 0.0)
    assert _settings(["bench", "--data-dir", "/mine"], "bench", {"FEDAGENTBENCH_DATA": "/pools"}).data_dir == \
        Path("/mine")
    exported: dict[str, str] = {"FEDAGENTBENCH_WARM_TRAINING": "false"}
    _settings(["bench", "--max-requests", "3"], "bench", exported).export(exported)
    # the validated values, in the form their readers (agents.limits, tools.training) expect
    assert exported == {"FEDAGENTBENCH_WARM_TRAINING": "0", "FEDAGENTBENCH_MAX_REQUESTS": "3"}


def test_every_variable_the_code_reads_is_a_setting_or_named_as_none() -> None:
    found: set[str] = set()
    for folder in ("agents", "environments", "eval", "federation", "fl", "graphs", "tools", "scripts"):
        for path in (REPO / folder).rglob("*.py"):
            found |= set(re.findall(r"FEDAGENTBENCH_[A-Z][A-Z_]*[A-Z]", path.read_text("utf-8")))
    missing = found - set(variables()) - set(NOT_SETTINGS)
    assert not missing, f"add these to fedagentbench_settings.Settings (or NOT_SETTINGS): {sorted(missing)}"
    assert {"FEDAGENTBENCH_MAX_REQUESTS", "FEDAGENTBENCH_DATA", "FEDAGENTBENCH_MODEL_PRICES"} <= set(variables())


@pytest.mark.parametrize(("args", "env", "named"), [
    (["bench", "--temperature", "-1"], {}, "--temperature '-1'"),
    (["run", "--env", "e", "--task", "t", "--budget", "many"], {}, "--budget 'many'"),
    (["bench"], {"FEDAGENTBENCH_MAX_REQUESTS": "lots"}, "FEDAGENTBENCH_MAX_REQUESTS='lots'"),
    (["federate", "run", "f.yaml", "--rounds", "0"], {}, "--rounds '0'"),
    (["run", "--env", "e", "--task", "t", "--seed", "3"], {}, "--sampling-seed"),
])
def test_a_bad_value_is_one_line_naming_where_it_came_from(args: list[str], env: dict[str, str], named: str) -> None:
    proc = _cli(*args, env=env)
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stdout + proc.stderr
    assert lines[0].startswith("error: ") and named in lines[0]


def test_the_model_validates_once_with_one_line_errors() -> None:
    with pytest.raises(SettingsError, match=r"^FEDAGENTBENCH_LOCAL_N_CTX='abc': .*integer$"):
        _settings(["bench"], "bench", {"FEDAGENTBENCH_LOCAL_N_CTX": "abc"})


def _fake_bench(seen: list):
    def run_matrix(spec, on_done=None, on_note=None):
        seen.append(spec)
        raise KeyboardInterrupt  # stop before anything is built: main() answers 130

    return run_matrix


def test_cache_means_the_same_in_run_and_bench(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import eval.bench
    import graphs.run
    from eval.store import RunKey
    from tests.test_statistics import _fake_run_task

    env = tmp_path / "xray"
    (env / "server" / "tasks").mkdir(parents=True)
    (env / "environment.json").write_text("{}")
    (env / "server" / "tasks" / "t.json").write_text("{}")
    runs: list = []
    benches: list = []
    monkeypatch.setattr(graphs.run, "run_task", _fake_run_task(runs))
    monkeypatch.setattr(eval.bench, "run_matrix", _fake_bench(benches))
    key = RunKey(model="oracle", environment="xray", task="t", guidance="fine", mode="e2e", run=1)
    mine = tmp_path / "mine"
    for cache, expected in (([], None), (["--cache"], "llm_cache"), (["--cache", str(mine)], str(mine))):
        folder = tmp_path / f"cache{len(cache)}"
        assert main(["run", "--env", str(env), "--task", "t", "--model", "oracle", "--db",
                     str(folder / "run" / "checkpoints.sqlite"), *cache]) == 0
        assert main(["bench", "--model", "oracle", "--env", "xray", "--out", str(folder / "bench"), *cache]) == 130
        run_cache = runs[-1].cache_dir
        bench_cache = eval.bench.run_config(benches[-1], key, tmp_path).cache_dir
        if expected is None:
            assert run_cache is None and bench_cache is None
        elif expected == "llm_cache":  # beside the checkpoint database, in both
            assert run_cache == str((folder / "run" / "llm_cache").resolve())
            assert bench_cache == str((folder / "bench" / "llm_cache").resolve())
        else:
            assert run_cache == bench_cache == str(mine.resolve())


def test_seed_is_the_environment_seed_and_sampling_seed_the_models(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import eval.bench

    benches: list = []
    monkeypatch.setattr(eval.bench, "run_matrix", _fake_bench(benches))
    assert main(["bench", "--model", "oracle", "--env", "xray", "--seed", "5", "--runs", "2",
                 "--out", str(tmp_path / "a")]) == 130
    assert main(["bench", "--model", "oracle", "--env", "xray", "--seed", "5", "--sampling-seed", "100",
                 "--runs", "2", "--out", str(tmp_path / "b")]) == 130
    follows, own = benches
    assert eval.bench.environments_dir(follows).name == eval.bench.environments_dir(own).name == "tiny-seed5"
    assert [eval.bench.sampling_seed(follows, r) for r in (1, 2)] == [6, 7]  # as before: --seed + r
    assert [eval.bench.sampling_seed(own, r) for r in (1, 2)] == [101, 102]
    assert _settings(["run", "--env", "e", "--task", "t", "--sampling-seed", "4"], "run").sampling_seed == 4


def test_federate_run_takes_the_shared_settings_over_the_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import federation.run

    site = tmp_path / "a"
    site.mkdir()
    (tmp_path / "f.yaml").write_text(f'request: "Train a classifier."\nclasses: [x, y]\nrounds: 3\nseed: 1\n'
                                     f'sites:\n  - name: a\n    path: "{site}"\n')
    seen: list = []

    def fake(spec, work, model=None, request=None, progress=None, ask=None, agents=None, transport=None):
        seen.append((spec, model, agents))
        raise KeyboardInterrupt

    monkeypatch.setattr(federation.run, "run_federation", fake)
    monkeypatch.delenv("FEDAGENTBENCH_MAX_REQUESTS", raising=False)
    assert main(["federate", "run", str(tmp_path / "f.yaml")]) == 130
    assert main(["federate", "run", str(tmp_path / "f.yaml"), "--model", "skyline", "--sampling-seed", "9",
                 "--rounds", "2", "--max-requests", "3", "--temperature", "0.5", "--budget", "7", "--cache"]) == 130
    (yaml_spec, no_model, defaults), (spec, model, agents) = seen
    assert (yaml_spec.seed, yaml_spec.rounds, no_model) == (1, 3, None)  # the YAML's
    assert (defaults["budget"], defaults["cache_dir"]) == (16, None)
    assert (spec.seed, spec.rounds, model) == (9, 2, "skyline")
    assert (agents["temperature"], agents["budget"]) == (0.5, 7)
    assert agents["cache_dir"] == str((tmp_path / "f.work" / "llm_cache").resolve())  # beside its checkpoints
    assert os.environ["FEDAGENTBENCH_MAX_REQUESTS"] == "3"


def test_help_shows_the_shared_options_in_all_three_commands() -> None:
    helps = {name: _cli(*argv, "--help") for name, argv in
             (("run", ["run"]), ("bench", ["bench"]), ("federate", ["federate", "run"]))}
    for name, proc in helps.items():
        assert proc.returncode == 0, proc.stderr
        assert "shared settings" in proc.stdout
        for option in SHARED + MODEL_OPTIONS:
            assert re.search(rf"^\s+{re.escape(option)}\b", proc.stdout, re.M), (name, option)
    assert "FEDAGENTBENCH_MAX_REQUESTS" in helps["bench"].stdout
    assert "environment seed" in helps["bench"].stdout  # bench's own --seed
    assert not re.search(r"^\s+--seed\b", helps["run"].stdout, re.M)  # run has no environment seed
