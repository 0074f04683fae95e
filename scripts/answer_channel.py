"""Benchmark (not a test): what the ``submit_answer`` tool does for a model, agent by agent.

For one tiny task per environment (fine guidance), runs the S1 agent, every hospital's C1 agent
(given the key's requirements, as in per-phase mode) and the S3 agent, once with the
``submit_answer`` tool offered and once with the text protocol only, and scores each with the
benchmark's own scorers. Prints a table: passes, how the answers arrived, model calls.

A whole end-to-end run of the 1.5B ``local`` model takes about an hour on two CPU cores (it
loops on tool calls until its budget ends); these three agents decide the selection and algorithm
sub-tasks and finish in minutes.

    OMP_NUM_THREADS=1 .venv/bin/python -m scripts.answer_channel --model local [--budget 6] [--env xray,mri]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from environments.concepts import ENVIRONMENTS
from fedagentbench_cli import quiet_environment


def run_agents(env_dir: Path, task: str, model: str, budget: int, submit: bool) -> dict:
    """S1, every C1 and S3 on one task; their scores, answer channels and model calls."""
    from eval.scoring import score_c1, score_s1, score_s3
    from graphs import phases, runtime
    from graphs.agents import agent_graph
    from graphs.state import ClientRecord, RunConfig, WorkflowState

    config = RunConfig(env_dir=str(env_dir), task_id=task, guidance="fine", model=model, budget=budget,
                       run_id=f"answer-channel-{'tool' if submit else 'text'}", submit_tool=submit, timeout_s=900)
    key = runtime.task_key(config)
    def run(role: str, state):  # one agent's subgraph on its own (no checkpointer)
        return agent_graph(role).invoke(state, {"recursion_limit": 4 * budget + 40})

    s1 = run("S1", WorkflowState(config=config))
    clients: dict[str, ClientRecord] = {}
    agents = list(s1["agents"])
    for name in runtime.client_names(config):
        c1 = run("C1", phases.ClientTask(config=config, client=name, requirements=key.requirements.model_dump()))
        clients.update({n: ClientRecord.model_validate(r) for n, r in c1["clients"].items()})
        agents += c1["agents"]
    # S3 sees the hospitals the key approves (as in per-phase mode), without their statistics
    state = WorkflowState(config=config, request=s1.get("request", ""), clients={
        n: ClientRecord(name=n, approved=True, training_input="work/input_harmonised")
        for n in runtime.client_names(config) if key.relevant_datasets.get(n)})
    s3 = run("S3", state)
    agents += s3["agents"]
    return {
        "S1": score_s1(s1.get("s1_answer"), key)["passed"],
        "C1": score_c1(clients, key)["passed"],
        "S3": score_s3(s3.get("algorithm"), key)["passed"],
        "answered_by": [a.get("answered_by") or ("failed" if not a["ok"] else "?") for a in agents],
        "model_calls": sum(a["model_calls"] for a in agents),
    }


def main() -> int:
    quiet_environment()
    import os

    from rich.table import Table

    from environments.builder import build_environment
    from environments.tasks import tasks_for
    from fedagentbench_cli import console as wide_console

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="local")
    parser.add_argument("--budget", type=int, default=6, help="model calls per agent")
    parser.add_argument("--env", default=",".join(ENVIRONMENTS))
    parser.add_argument("--seed", type=int, default=0, help="environment seed")
    parser.add_argument("--out", type=Path, default=Path("runs/answer-channel"))
    args = parser.parse_args()
    console = wide_console()
    rows = []
    results_file = args.out / "results.jsonl"
    args.out.mkdir(parents=True, exist_ok=True)
    for env in args.env.split(","):
        env_dir = args.out / "envs" / env
        if not (env_dir / "environment.json").is_file():
            build_environment(env, "tiny", args.seed, args.out / "envs", os.environ.get("FEDAGENTBENCH_DATA"))
        task = tasks_for(env)[0].task_id
        for submit in (True, False):
            t0 = time.perf_counter()
            result = run_agents(env_dir, task, args.model, args.budget, submit)
            result.update(env=env, task=task, submit_tool=submit, seconds=round(time.perf_counter() - t0, 1))
            with results_file.open("a") as fh:
                fh.write(json.dumps(result) + "\n")
            console.print(result)
            rows.append(result)
    table = Table(title=f"{args.model}: S1, C1, S3 with and without submit_answer (budget {args.budget}, fine)")
    for col in ("submit_answer", "environments", "S1", "C1", "S3", "answers by tool", "by text", "failed",
                "model calls", "minutes"):
        table.add_column(col, justify="right")
    for submit in (True, False):
        rs = [r for r in rows if r["submit_tool"] is submit]
        channels = [c for r in rs for c in r["answered_by"]]
        table.add_row("offered" if submit else "not offered", str(len(rs)),
                      *[f"{sum(r[s] for r in rs)}/{len(rs)}" for s in ("S1", "C1", "S3")],
                      str(channels.count("tool")), str(channels.count("text")), str(channels.count("failed")),
                      str(sum(r["model_calls"] for r in rs)), f"{sum(r['seconds'] for r in rs) / 60:.1f}")
    console.print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
