"""A person in the loop: ``federate run --approve`` asks in the terminal before a gated tool call runs.

The question comes from an agent's ``approve`` step (a checkpointed LangGraph interrupt, see
:mod:`agents.loop`): which agent, the tool, its arguments, what it would do in words, and the
agent's own words for why. The answer is approve, reject (with an optional note the agent reads)
or edit (new arguments as JSON). A closed input (EOF) leaves the run paused in its checkpoints.
"""

from __future__ import annotations

import json
from typing import Any

CHOICES = {"a": "approve", "approve": "approve", "y": "approve", "yes": "approve",
           "r": "reject", "reject": "reject", "n": "reject", "no": "reject",
           "e": "edit", "edit": "edit"}


def terminal_asker(console: Any):
    """``ask(question) -> decision`` that shows the question on ``console`` and reads the answer."""

    from rich.markup import escape

    def say(label: str, text: str) -> None:  # one line however long: the arguments stay copyable JSON
        console.print(f"[bold]{label}:[/] {escape(text)}", soft_wrap=True)

    def read(prompt: str) -> str:
        console.print(prompt, end="", markup=False)
        console.file.flush()
        line = input()  # EOFError when nobody is there: the run stays paused
        return line.strip()

    def ask(question: dict[str, Any]) -> dict[str, Any]:
        console.rule(f"approval needed: {question.get('agent')} wants to call {question.get('tool')}")
        say("What", str(question.get("what")))
        say("Arguments", json.dumps(question.get("args") or {}))
        if question.get("why"):
            say("The agent says", str(question["why"]))
        while True:
            action = CHOICES.get(read("approve, reject or edit? [a/r/e] ").lower())
            if action is None:
                console.print("answer a (approve), r (reject) or e (edit)")
                continue
            if action == "approve":
                return {"action": "approve"}
            if action == "reject":
                return {"action": "reject", "note": read("note for the agent (optional): ")}
            text = read("new arguments as JSON: ")
            try:
                args = json.loads(text)
            except json.JSONDecodeError as exc:
                console.print(f"not JSON ({exc.msg}); asking again")
                continue
            if not isinstance(args, dict):
                console.print("the arguments must be a JSON object; asking again")
                continue
            return {"action": "edit", "args": args, "note": "edited by the reviewer"}

    return ask
