"""Graphs for LangGraph Studio / ``langgraph dev`` (an entry point, like the CLI): compiled without a
checkpointer (the server persists them); the workflow scores its runs as the benchmark does. Input: ``{"config": {"env_dir": ..., "task_id": ..., "model": "oracle"}}``."""

from __future__ import annotations

from fedagentbench_cli import quiet_environment

quiet_environment()

from eval.scoring import score_run  # noqa: E402
from graphs.workflow import PHASE_BUILDERS, workflow_builder  # noqa: E402

workflow = workflow_builder(score_run).compile()
selection = PHASE_BUILDERS["selection"]().compile()
preprocessing = PHASE_BUILDERS["preprocessing"]().compile()
harmonisation = PHASE_BUILDERS["harmonisation"]().compile()
training = PHASE_BUILDERS["training"]().compile()
