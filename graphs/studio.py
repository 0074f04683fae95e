"""Graphs for LangGraph Studio / ``langgraph dev``: compiled without a checkpointer (the server
persists them). Input: ``{"config": {"env_dir": ..., "task_id": ..., "model": "oracle"}}``."""

from __future__ import annotations

from fedagentbench_cli import quiet_environment

quiet_environment()

from graphs.workflow import PHASE_BUILDERS, workflow_builder  # noqa: E402

workflow = workflow_builder().compile()
selection = PHASE_BUILDERS["selection"]().compile()
preprocessing = PHASE_BUILDERS["preprocessing"]().compile()
harmonisation = PHASE_BUILDERS["harmonisation"]().compile()
training = PHASE_BUILDERS["training"]().compile()
