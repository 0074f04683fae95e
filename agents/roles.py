"""The seven agents: who they are, which tools they hold, how they are asked, what they return.

Every prompt exists in two guidance styles (SPEC section 4): ``fine`` spells the steps and names the
tools; ``goal`` states only the goal, the inputs and the answer format. Prompts carry paths and
status messages only. The system prompt opens with ``Agent <ROLE>`` (and the client) so the
baselines, which are chat models too, know which role they are playing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from agents import results

PRIVACY_RULES = (
    "Rules: you work only through your tools and only inside your workspace. Never ask for or output "
    "pixel values, image bytes, patient names or IDs; report paths, counts and names of classes only."
)


@dataclass(frozen=True)
class Role:
    name: str
    title: str
    side: str  # "server" or "client"
    tools: tuple[str, ...]
    first_tool: str | None
    parse: Callable[..., object]
    answer_format: str
    #: the answer's schema: the arguments of the role's ``submit_answer`` tool
    schema: type | None = None


ROLES: dict[str, Role] = {
    "S1": Role("S1", "task analyst", "server", ("read_task",), "read_task", results.parse_requirements,
               "Answer with exactly these lines:\nModality: <imaging modality>\nTask type: classification\n"
               "Target classes: <class>, <class>, ...\nRequirement: <one of: baseline, label_skew, feature_shift, "
               "personalisation, unseen_site, stragglers, heterogeneous_architectures>", schema=results.TaskRequirementsResult),
    "C1": Role("C1", "dataset selector", "client", ("read_data_cards", "read_text_file", "list_folder"),
               "read_data_cards",
               results.parse_selection,
               "Answer with one line '**Dataset Name** : <name>' per matching dataset (names exactly as in the data "
               "cards), or 'no dataset' followed by the reason.", schema=results.DatasetSelection),
    "S2": Role("S2", "federation coordinator", "server", (), None, results.parse_approval,
               "Answer with one line: 'Approved: <client>, <client>' (or 'Approved: none').", schema=results.ApprovalResult),
    "C2": Role("C2", "data cleaner", "client",
               ("read_data_cards", "read_text_file", "list_folder", "preview_label_file", "copy_dataset",
                "organise_by_label_file", "remove_non_image_files", "convert_images", "detect_data_issues",
                "remove_flagged_files", "remove_files", "summarise_images", "report_dataset_statistics"),
               "read_data_cards", results.parse_cleaning,
               "When done, answer with 'Output path: <cleaned folder>' and one line 'Data Cleaning Complete'.", schema=results.CleaningReport),
    "C3": Role("C3", "label harmoniser", "client",
               ("read_data_cards", "read_text_file", "list_class_folders", "apply_label_mapping",
                "report_dataset_statistics"),
               "list_class_folders", results.parse_harmonisation,
               "When done, answer with one line '<local class> -> <target class or drop>' per local class, then "
               "'Output path: <harmonised folder>'.", schema=results.HarmonisationReport),
    "S3": Role("S3", "algorithm selector", "server", ("query_algorithm_registry", "read_client_statistics"),
               "query_algorithm_registry", results.parse_algorithm,
               "Answer with one line 'Algorithm Name: <name exactly as in the registry>' and a one-sentence reason.", schema=results.AlgorithmChoice),
    "S4": Role("S4", "training coordinator", "server", ("launch_training", "training_status"), "launch_training",
               results.parse_training, "When training has finished, answer with 'Status: <completed or failed>' and a "
               "one-line summary of the final metrics.", schema=results.TrainingReport),
}


ANSWER_TOOL_NOTE = ("You can also give your final answer by calling submit_answer with the answer's fields "
                    "instead of writing it.")


def answer_tool(role: Role):
    """The role's ``submit_answer`` tool: its arguments are the role's answer schema. The agent
    runner intercepts the call and parses the arguments like a JSON answer; the body never runs."""
    from langchain_core.tools import StructuredTool

    def submit_answer(**fields) -> str:  # pragma: no cover - intercepted by agents.runner
        return "answer received"

    return StructuredTool.from_function(
        func=submit_answer, name="submit_answer", args_schema=role.schema,
        description=f"Submit your final answer as agent {role.name} ({role.title}). Call it once, when you are done.")


def system_prompt(role: Role, guidance: str, client: str | None = None, submit_tool: bool = False) -> str:
    who = f"Agent {role.name} at client {client}" if client else f"Agent {role.name} on the server"
    style = ("Follow the numbered steps exactly." if guidance == "fine"
             else "Plan your own workflow with the tools you have, then solve the task.")
    return (f"{who}: the {role.title} of a federated-learning team of hospitals.\n{style}\n{PRIVACY_RULES}\n"
            f"{role.answer_format}" + (f"\n{ANSWER_TOOL_NOTE}" if submit_tool else ""))


def user_prompt(role: Role, guidance: str, ctx: dict) -> str:
    """The role's instruction for this run; ``ctx`` holds the run's paths and statuses."""
    builder = {"S1": _s1, "C1": _c1, "S2": _s2, "C2": _c2, "C3": _c3, "S3": _s3, "S4": _s4}[role.name]
    return builder(guidance == "fine", ctx)


def _s1(fine: bool, ctx: dict) -> str:
    text = f"User request (task id {ctx['task_id']}):\n{ctx['request']}\n"
    if fine:
        text += ("Steps: 1. Call read_task to read the full request. 2. Extract the imaging modality, the task "
                 "type, the exact target class names and the requirement that should decide the FL algorithm. "
                 "3. Answer in the required format; the broadcast to the hospitals is made from it.")
    else:
        text += "Extract what the hospitals need to know to find suitable data, and the deciding requirement."
    return text


def _c1(fine: bool, ctx: dict) -> str:
    about = f" ({ctx['title']})" if ctx.get("title") else ""
    organ = f" of the {ctx['body_part']}" if ctx.get("body_part") else ""
    text = (f"Broadcast from the server: the federation will train a {ctx['task_type']} model{about} on "
            f"{ctx['modality']} images{organ} with target classes {', '.join(ctx['target_classes'])}.\n"
            + (f"Task note: {ctx['class_note']}\n" if ctx.get("class_note") else "")
            + "Your data cards are in data_cards.json.\n")
    if fine:
        text += ("Steps: 1. read_data_cards. 2. A dataset matches only if it holds images of this modality and "
                 "body part from human patients, is labelled for classification, and its classes can be mapped "
                 "onto every target class. Segmentation-only, registration, unlabelled, animal and other-modality datasets do not "
                 "match. 3. Choose every matching dataset, not only the first.")
    return text


def _s2(fine: bool, ctx: dict) -> str:
    lines = "\n".join(f"- {name}: {reply}" for name, reply in ctx["replies"].items())
    text = f"Replies of the hospitals to the broadcast:\n{lines}\n"
    if fine:
        text += ("Steps: 1. Approve every hospital that reported at least one matching dataset. "
                 "2. Release the hospitals that reported none. 3. Answer in the required format.")
    else:
        text += "Decide which hospitals take part in training."
    return text


def _c2(fine: bool, ctx: dict) -> str:
    datasets = ", ".join(ctx["datasets"])
    out, raw = ctx["output_path"], ctx["scratch_path"]
    size = ctx["image_size"]
    text = (f"Approved for training. Clean these local datasets: {datasets}.\n"
            f"Write the cleaned data under {out}/<dataset name>/<class name>/ (one folder per dataset, one "
            f"sub-folder per local class). Standard schema: PNG, {size}x{size}, "
            f"{'RGB' if ctx['mode'] == 'RGB' else 'greyscale (mode L)'}. Use {raw}/ for intermediate copies. "
            "Never modify anything under datasets/. Your data cards are in data_cards.json.\n")
    if fine:
        text += (
            "Steps, for each dataset:\n"
            "1. read_data_cards: find the dataset's path, layout and label file.\n"
            f"2. If it is stored as one folder per class, copy_dataset it to {raw}/<dataset name>; otherwise "
            f"organise_by_label_file into {raw}/<dataset name> (preview_label_file shows the label file's columns).\n"
            f"3. remove_non_image_files in {raw}/<dataset name>.\n"
            f"4. convert_images from {raw}/<dataset name> to {out}/<dataset name> with size {size} and mode "
            f"{ctx['mode']}.\n"
            f"5. detect_data_issues on {out}/<dataset name>, then remove_flagged_files with the flags file it wrote "
            "(or remove_files for the files you judge wrong).\n"
            f"6. report_dataset_statistics for {out}.\n"
            "Print 'Data Cleaning Complete' at the end.")
    return text


def _c3(fine: bool, ctx: dict) -> str:
    targets = ", ".join(ctx["target_classes"])
    about = f" for the {ctx['title']} model" if ctx.get("title") else ""
    organ = f" ({ctx['body_part']} images)" if ctx.get("body_part") else ""
    text = (f"Harmonise the labels of the cleaned datasets{organ} in {ctx['input_path']} (one folder per dataset) "
            f"onto the target classes [{targets}]{about} and write the result to {ctx['output_path']}/<target class>/.\n"
            f"Task note: {ctx['class_note']}\n")
    if fine:
        text += (
            "Steps, for each dataset folder:\n"
            "1. list_class_folders to see its local class names (read_data_cards explains coded class names).\n"
            "2. Decide for every local class the target class it belongs to, or 'drop' if none fits.\n"
            f"3. apply_label_mapping from {ctx['input_path']}/<dataset> to {ctx['output_path']} with that mapping.\n"
            "4. report_dataset_statistics on the output.")
    return text


def _s3(fine: bool, ctx: dict) -> str:
    text = (f"Requirements of the task: {ctx['request']}\n"
            f"Participating hospitals: {', '.join(ctx['clients'])}; their statistics files: "
            f"{', '.join(ctx['stats_paths']) or 'none'}.\n")
    if fine:
        text += ("Steps: 1. query_algorithm_registry (filter by the cue that matches the requirement: label_skew, "
                 "feature_shift, personalisation, unseen_site, stragglers, heterogeneous_architectures or baseline). "
                 "2. Optionally read_client_statistics. 3. Choose the algorithm whose key idea addresses the "
                 "requirement; prefer an executable one.")
    return text


def _s4(fine: bool, ctx: dict) -> str:
    text = (f"Start federated training with algorithm {ctx['algorithm']} on the harmonised data of: "
            f"{', '.join(ctx['clients'])} ({ctx['rounds']} round(s)).\n")
    if fine:
        text += ("Steps: 1. launch_training with the algorithm and the clients. 2. training_status until it has "
                 "finished. 3. Report the status and final metrics.")
    return text
