"""Task accuracy at scale: requests batched on both backends, chunks saved and resumed after a
kill, the chat template by default for instruction-tuned models, limits as fractions, and a
task stage's key following its backend and its prompt settings."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import read_json, tiny_study_yaml
from quantbench.config import EvaluationConfig, TasksConfig
from quantbench.errors import UserError
from quantbench.evaluate import with_chat_template_choice
from quantbench.metrics.tasks import _task_manager
from quantbench.tasks.harness import ItemProgress, LeafTask, choose_items, item_chunks, run_task


def _gsm8k(root: Path, n: int) -> Path:
    """`n` hand-written GSM8K-shaped rows (not copies of the real set) in shared/data's layout."""
    rows = [
        {"question": f"Tom has {i} apples and buys 2 more. How many?", "answer": f"#### {i + 2}"}
        for i in range(n)
    ]
    folder = root / "gsm8k"
    folder.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r) + "\n" for r in rows)
    (folder / "test.jsonl").write_text(text)
    (folder / "train.jsonl").write_text(text)
    return root


class _Docs:
    def __init__(self, n: int) -> None:
        self.eval_docs = list(range(n))


def test_a_fraction_limit_takes_that_share_of_every_subtask_rounded_up() -> None:
    leaves = [LeafTask("a", _Docs(10)), LeafTask("b", _Docs(3)), LeafTask("c", _Docs(0))]
    choose_items(leaves, 0.25)
    assert [leaf.take for leaf in leaves] == [3, 1, 0]
    assert TasksConfig(limit=0.1).limit == 0.1 and TasksConfig(limit=200.0).limit == 200
    with pytest.raises(ValueError, match="fraction below 1"):
        TasksConfig(limit=2.5)


def test_items_are_cut_into_consecutive_chunks_across_subtasks() -> None:
    a, b = LeafTask("a", None, take=3), LeafTask("b", None, take=2)
    assert item_chunks([a, b], 2) == [{"a": [0, 1]}, {"a": [2], "b": [0]}, {"b": [1]}]
    assert item_chunks([a, b], 64) == [{"a": [0, 1, 2], "b": [0, 1]}]


class _CountingLM:
    """An lm-eval model answering the GSM8K-shaped questions right when their number is
    even, that can stop the run after a number of calls as a kill would."""

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        from lm_eval.api.model import LM

        class Model(LM):  # type: ignore[misc]
            def __init__(self, fail_after: int | None) -> None:
                super().__init__()
                self.calls: list[int] = []
                self.fail_after = fail_after

            def generate_until(self, requests: Any, disable_tqdm: bool = False) -> list[str]:
                if self.fail_after is not None and len(self.calls) >= self.fail_after:
                    raise KeyboardInterrupt("killed")
                self.calls.append(len(requests))
                answers = []
                for request in requests:
                    n = int(request.args[0].split("Tom has ")[1].split(" ")[0])
                    answers.append(f"#### {n + 2}" if n % 2 == 0 else "#### 0")
                return answers

            def loglikelihood(self, requests: Any, disable_tqdm: bool = False) -> Any:
                raise AssertionError("gsm8k generates")

            def loglikelihood_rolling(self, requests: Any, disable_tqdm: bool = False) -> Any:
                raise AssertionError("gsm8k generates")

        return Model(*args, **kwargs)


def test_a_killed_task_resumes_at_the_first_unsaved_chunk(tmp_path: Path) -> None:
    """Chunks of 2 over 5 items: a run stopped during its second chunk leaves the first
    saved; the rerun asks the model for the last two chunks only and ends with the items
    (ids, prompts and scores) an uninterrupted run scores."""
    data = _gsm8k(tmp_path / "data", 5)
    config = TasksConfig(
        names=("gsm8k",), data_dir=data, num_fewshot=0, chunk_items=2, apply_chat_template=False
    )
    manager = _task_manager(config)  # local files only: no index of lm-eval's own tasks
    reports: list[tuple[str, int, int]] = []
    meter = ItemProgress(lambda phase, done, total: reports.append((phase, done, total)))
    resume = tmp_path / "partial"
    resume.mkdir()
    with pytest.raises(KeyboardInterrupt):
        run_task("gsm8k", _CountingLM(1), config, manager, meter, resume=resume)
    assert sorted(p.name for p in resume.iterdir()) == ["chunk-00000.json"]

    again = _CountingLM(None)
    resumed = run_task("gsm8k", again, config, manager, ItemProgress(lambda *a: None), resume)
    assert again.calls == [2, 1]
    whole = run_task("gsm8k", _CountingLM(None), config, manager, ItemProgress(lambda *a: None))
    assert resumed.items == whole.items and len(whole.items) == 5
    assert [item["score"] for item in whole.items] == [1, 0, 1, 0, 1]
    assert resumed.settings["resumed_items"] == 2 and whole.settings["resumed_items"] == 0
    assert resumed.aggregates == whole.aggregates
    assert whole.aggregates["gsm8k"]["exact_match,strict-match"] == pytest.approx(0.6)
    assert reports[0] == ("0/5 items", 0, 5) and reports[-1][1:] == (2, 5)


def test_the_chat_template_is_on_for_models_that_have_one_unless_turned_off(
    tiny_model: Path, tmp_path: Path
) -> None:
    chosen = EvaluationConfig(tasks=TasksConfig(names=("gsm8k",)))
    assert with_chat_template_choice(chosen, tiny_model).tasks.apply_chat_template is True
    base = tmp_path / "base"
    base.mkdir()
    (base / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 64}))
    assert with_chat_template_choice(chosen, base).tasks.apply_chat_template is False
    refused = EvaluationConfig(tasks=TasksConfig(names=("gsm8k",), apply_chat_template=False))
    assert with_chat_template_choice(refused, tiny_model).tasks.apply_chat_template is False


def _task_keys(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **evaluation: Any
) -> dict[str, str]:
    from quantbench.config import StudyConfig
    from quantbench.evaluate import plan_evaluation
    from quantbench.models import resolve_model
    from quantbench.plan import build_plan

    monkeypatch.setattr("quantbench.evaluate.vllm_python", lambda python: "python")
    monkeypatch.setattr("quantbench.evaluate.vllm_version", lambda python: "0.0-test")
    data = _gsm8k(tmp_path / "data", 3)
    tasks = {"names": ["gsm8k"], "data_dir": str(data), **evaluation.pop("tasks", {})}
    config = StudyConfig.model_validate(
        {
            "model": str(tiny_model),
            "schemes": ["bf16", "fp8-dynamic"],
            "evaluation": {"metrics": [], "tasks": tasks, **evaluation},
        }
    )
    model = resolve_model(str(tiny_model))
    evaluation_plan = plan_evaluation(build_plan(config, model), config.evaluation)
    return {variant: refs["tasks.gsm8k"].key for variant, refs in evaluation_plan.stages.items()}


def test_a_task_stage_key_follows_its_backend_and_chat_template_choice(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    default = _task_keys(tiny_model, tmp_path, monkeypatch)
    on = _task_keys(tiny_model, tmp_path, monkeypatch, tasks={"apply_chat_template": True})
    off = _task_keys(tiny_model, tmp_path, monkeypatch, tasks={"apply_chat_template": False})
    vllm = _task_keys(tiny_model, tmp_path, monkeypatch, tasks_backend="vllm")
    both = _task_keys(tiny_model, tmp_path, monkeypatch, backend="vllm")
    assert default == on  # the tiny model has a chat template: on is the default
    assert off["bf16"] != on["bf16"] and off["fp8-dynamic"] != on["fp8-dynamic"]
    assert vllm["bf16"] != default["bf16"] and vllm == both
    chunks = _task_keys(tiny_model, tmp_path, monkeypatch, tasks={"chunk_items": 8})
    assert chunks["bf16"] != default["bf16"]


def test_the_hf_backend_batches_task_generation(tiny_model: Path) -> None:
    from lm_eval.api.instance import Instance

    from quantbench.backends.hf import HFBackend

    backend = HFBackend(device="cpu", dtype="float32")
    backend.load(tiny_model)
    lm = backend.lm_eval_model(4, lambda *a: None)
    batches: list[int] = []
    generate = lm._model_generate

    def counting(context: Any, *args: Any, **kwargs: Any) -> Any:
        batches.append(int(context.shape[0]))
        return generate(context, *args, **kwargs)

    lm._model_generate = counting
    requests = [
        Instance(
            "generate_until",
            {},
            (f"question {i} " * (i + 1), {"until": ["\n"], "max_gen_toks": 2}),
            i,
        )
        for i in range(8)
    ]
    texts = lm.generate_until(requests)
    backend.close()
    assert len(texts) == 8 and batches == [4, 4]


def test_a_study_killed_inside_a_task_stage_resumes_its_items(
    tiny_model: Path, tmp_path: Path
) -> None:
    """SIGKILL the whole run once the task stage has saved its first chunk; the rerun keeps
    the saved chunks (the record says how many items it resumed) and scores the rest."""
    data = _gsm8k(tmp_path / "data", 40)
    out = tmp_path / "out"
    evaluation = {
        "metrics": [],
        "tasks": {
            "names": ["gsm8k"],
            "data_dir": str(data),
            "num_fewshot": 0,
            "max_gen_tokens": 2,
            "chunk_items": 2,
        },
    }
    study = tiny_study_yaml(tmp_path / "study.yaml", tiny_model, out, ["bf16"], evaluation)
    command = [sys.executable, "-m", "quantbench", "run", "--config", str(study)]
    run = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    partial = out / "stages" / "tasks.gsm8k"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and run.poll() is None:
        if any(partial.glob(".partial-*/chunk-00001.json")):
            break
        time.sleep(0.02)
    os.killpg(run.pid, signal.SIGKILL)
    run.wait()
    saved = len(list(partial.glob(".partial-*/chunk-*.json")))
    assert not list(partial.glob("*/manifest.json")) and 2 <= saved < 20, saved
    plan = subprocess.run(
        [sys.executable, "-m", "quantbench", "plan", "--config", str(study)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "COLUMNS": "400"},
    )
    assert plan.returncode == 0, plan.stderr[-2000:]
    assert f"at the rate of this stage's first {2 * saved} items" in plan.stdout, plan.stdout
    assert "40 items, about" in plan.stdout
    again = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    record = read_json(out / "results.json")["variants"][0]["metrics"]["tasks"]["gsm8k"]  # type: ignore[index]
    assert record["n_items"] == 40
    assert record["settings"]["resumed_items"] == 2 * saved
    assert not list(partial.glob(".partial-*"))  # gone with the commit


def test_a_bad_limit_on_the_command_line_is_one_line(tiny_model: Path) -> None:
    from quantbench.cli import _count_or_fraction

    assert _count_or_fraction("200") == 200 and _count_or_fraction("0.25") == 0.25
    for bad in ("1.5", "0", "-3", "many"):
        with pytest.raises(UserError, match="--limit takes"):
            _count_or_fraction(bad)


def _mmlu_pro(root: Path, per_category: dict[str, int]) -> Path:
    rows = [
        {"question": "q", "options": ["a", "b"], "answer": "A", "cot_content": "", "category": c}
        for c, n in per_category.items()
        for _ in range(n)
    ]
    folder = root / "mmlu_pro"
    folder.mkdir(parents=True, exist_ok=True)
    for split in ("test", "validation"):
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def test_plan_counts_a_pending_task_stage_items_and_estimates_its_time(tmp_path: Path) -> None:
    from quantbench.metrics.tasks import planned_work
    from quantbench.tasks.data import eval_counts
    from quantbench.tasks.harness import planned_items

    data = _mmlu_pro(_gsm8k(tmp_path / "data", 7), {"law": 10, "math": 3, "history": 5})
    assert eval_counts("gsm8k", data) == [7]
    assert sorted(eval_counts("mmlu_pro", data)) == [3, 5, 10]
    assert planned_items([10, 3, 5], None) == 18
    assert planned_items([10, 3, 5], 12) == 12 and planned_items([10, 3, 5], 40) == 18
    assert planned_items([10, 3, 5], 0.25) == 3 + 1 + 2  # each subtask's share, rounded up

    config = TasksConfig(names=("mmlu_pro",), data_dir=data, limit=0.5)
    unmeasured = planned_work("mmlu_pro", config, [], [])
    assert (unmeasured.items, unmeasured.seconds) == (10, None)
    assert unmeasured.describe().startswith("10 items; no rate measured yet")
    # A killed run scored 4 of them in 8 s: 6 left at 2 s each.
    resumed = planned_work("mmlu_pro", config, [(2, 3.0), (2, 5.0)], [(100, 1.0)])
    assert resumed.seconds == pytest.approx(12.0)
    assert resumed.describe() == "10 items, about 12 s (at the rate of this stage's first 4 items)"
    # Another variant's finished stage scored 50 items in 150 s: 10 at 3 s each.
    borrowed = planned_work("mmlu_pro", config, [], [(50, 150.0)])
    assert (
        borrowed.seconds == pytest.approx(30.0) and "50 items of this task" in borrowed.describe()
    )
    hub = planned_work("arc_easy", TasksConfig(names=("arc_easy",)), [], [(5, 1.0)])
    assert hub.items is None and "hub data" in hub.describe()


def test_chunk_aggregates_combine_only_means_over_items() -> None:
    """Two chunks of 3 and 1 items: a mean-aggregated metric combines exactly (weighted by
    items); one that is not (IFEval's instruction-level accuracy) is left out, and a leaf
    scored in a single chunk keeps lm-eval's figures as they are."""
    from quantbench.tasks.harness import combine_aggregates

    def piece(values: dict[str, dict[str, float]], counts: dict[str, int]) -> dict[str, Any]:
        means = {leaf: ["prompt_level_strict_acc"] for leaf in values}
        return {"results": values, "counts": counts, "mean_metrics": means}

    first = piece(
        {
            "ifeval": {"prompt_level_strict_acc,none": 1 / 3, "inst_level_strict_acc,none": 0.5},
            "solo": {"prompt_level_strict_acc,none": 0.25, "inst_level_strict_acc,none": 0.4},
        },
        {"ifeval": 3, "solo": 4},
    )
    second = piece(
        {"ifeval": {"prompt_level_strict_acc,none": 1.0, "inst_level_strict_acc,none": 1.0}},
        {"ifeval": 1},
    )
    combined = combine_aggregates([first, second])
    assert combined["ifeval"] == {"prompt_level_strict_acc,none": pytest.approx(0.5)}
    assert combined["solo"] == first["results"]["solo"]
