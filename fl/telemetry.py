"""The variables that keep LangGraph, LangSmith, Flower, Ray and the Hugging Face hub from calling
home (README, "Offline by default"), in one place.

The command line (``fedagentbench_cli.quiet_environment``), the Studio graphs, the Flower runtimes
started here (``fl.simulation``, ``fl.deploy``), the scripts and the tests all read this list; it sits
in the lowest layer that needs it and imports nothing. The Makefile and ``.ci/run`` are shell and export
their own copy: ``tests/test_offline.py`` checks that it is this one.
"""

#: variable -> the value that switches its telemetry, analytics or update check off
QUIET_ENV: dict[str, str] = {
    "LANGGRAPH_CLI_NO_ANALYTICS": "1",
    "LANGGRAPH_NO_VERSION_CHECK": "true",
    "LANGSMITH_TRACING": "false",
    "LANGCHAIN_TRACING_V2": "false",
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "HF_HUB_OFFLINE": "1",
}
