"""HumanEval(+) scoring with model-written code run inside `quantbench.sandbox`.

lm-eval's stock scorer loads HF `evaluate`'s `code_eval` from the hub at import time and
runs the programs in threads of the evaluating process. Here the task keeps lm-eval's
prompts, stop sequences and program assembly (prompt + completion, then the dataset's test
and `check(entry_point)`), and each program runs in a fresh sandboxed process instead: it
passes when it runs to its end within the time limit, as with `code_eval`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from quantbench.sandbox import SandboxLimits, run_untrusted

CODE_TASKS = frozenset({"humaneval", "humaneval_plus"})
"""Tasks whose generated code quantbench knows how to score in its sandbox."""

PASS_METRIC = "pass_at_1"


class SandboxError(RuntimeError):
    """The sandbox could not run a program, so the item cannot be scored."""


def build_predictions(resps: list[list[str]], docs: list[dict[str, Any]]) -> list[list[str]]:
    """lm-eval filter: the program under test is the prompt followed by the completion."""
    return [[doc["prompt"] + r for r in resp] for resp, doc in zip(resps, docs, strict=True)]


def make_pass_at_1(limits: SandboxLimits) -> Callable[..., float]:
    """An lm-eval metric function: 1.0 when the first candidate passes the tests, else 0.0.

    lm-eval calls it once per item with one reference (test code plus `check(...)`) and
    one list of candidate programs.
    """

    def pass_at_1(references: list[str], predictions: list[list[str]], **_: Any) -> float:
        program = predictions[0][0] + "\n" + references[0] + "\n"
        outcome = run_untrusted(program, limits)
        if outcome.status == "error":  # never judged: scoring it 0 would fake a result
            raise SandboxError(f"the code sandbox did not start: {outcome.stderr_tail[-500:]}")
        return 1.0 if outcome.passed else 0.0

    return pass_at_1


def code_task_config(stock_yaml: Path, task: str, limits: SandboxLimits) -> dict[str, Any]:
    """The stock humaneval task config with quantbench's scorer instead of `code_eval`.

    The stock yaml is read without resolving its `!function` tags, because resolving them
    imports lm-eval's humaneval utils, which fetch `code_eval` from the hub.
    """
    from lm_eval.tasks._yaml_loader import load_yaml

    config: dict[str, Any] = load_yaml(stock_yaml, resolve_func=False)
    config["task"] = task
    config["metric_list"] = [
        {"metric": make_pass_at_1(limits), "aggregation": "mean", "higher_is_better": True}
    ]
    config["filter_list"] = [
        {"name": "create_test", "filter": [{"function": "custom", "filter_fn": build_predictions}]}
    ]
    return config
