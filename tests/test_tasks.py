"""Task accuracy through lm-eval: local data, the same items for every variant, paired stats,
sandboxed code, and the refusals that must happen before any compute."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import read_json, run_cli, tiny_study_yaml
from quantbench import stats
from quantbench.config import TasksConfig
from quantbench.errors import UserError
from quantbench.metrics.tasks import compare_items, summarize_task
from quantbench.sandbox import sandbox_available
from quantbench.tasks.data import dataset_overrides, resolve_files
from quantbench.tasks.harness import LeafTask, check_task, choose_items

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_shared_data = pytest.mark.skipif(
    not SHARED_DATA.is_dir(), reason="shared/data (real task data) is not next to the checkout"
)


def _jsonl(path: Path, rows: list[dict[str, Any]], gz: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r) + "\n" for r in rows)
    if gz:
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)


@pytest.fixture(scope="module")
def task_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A few hand-written rows in the shared/data layout (not copies of the real sets)."""
    root = tmp_path_factory.mktemp("task-data")
    math = [
        {"question": f"Tom has {n} apples and buys 2 more. How many?", "answer": f"#### {n + 2}"}
        for n in range(1, 7)
    ]
    _jsonl(root / "gsm8k" / "test.jsonl", math[:3])
    _jsonl(root / "gsm8k" / "train.jsonl.gz", math[3:], gz=True)
    _jsonl(
        root / "ifeval" / "input_data.jsonl",
        [
            {
                "key": 1,
                "prompt": "Describe a cat in fewer than 3 sentences.",
                "instruction_id_list": ["length_constraints:number_sentences"],
                "kwargs": [{"relation": "less than", "num_sentences": 3}],
            },
            {
                "key": 2,
                "prompt": "Write a short note without any commas.",
                "instruction_id_list": ["punctuation:no_comma"],
                "kwargs": [{}],
            },
        ],
    )
    _jsonl(
        root / "humanevalplus" / "HumanEvalPlus-OriginFmt.jsonl.gz",
        [
            {
                "task_id": "T/0",
                "prompt": "def add(a, b):\n",
                "canonical_solution": "    return a + b\n",
                "entry_point": "add",
                "test": "def check(candidate):\n    assert candidate(2, 3) == 5\n",
            }
        ],
        gz=True,
    )
    subjects = ["biology", "business", "chemistry", "computer science", "economics"]
    subjects += ["engineering", "health", "history", "law", "math", "other", "philosophy"]
    subjects += ["physics", "psychology"]  # MMLU-Pro's 14 categories: one lm-eval task each
    questions = [
        {
            "question_id": i,
            "question": f"Which number is largest ({subject})?",
            "options": ["1", "7", "3", "2"],
            "answer": "B",
            "answer_index": 1,
            "cot_content": "A: Let's think step by step. 7 is largest. The answer is (B).",
            "category": subject,
            "src": "hand-written",
        }
        for i, subject in enumerate(subjects)
    ]
    _jsonl(root / "mmlu_pro" / "test.jsonl", questions)
    _jsonl(root / "mmlu_pro" / "validation.jsonl", questions)
    return root


# ---------------------------------------------------------------------- local data


def test_local_files_resolve_to_lm_eval_dataset_overrides(task_data: Path) -> None:
    files = resolve_files("gsm8k", task_data)
    assert files == {
        "test": task_data / "gsm8k" / "test.jsonl",
        "train": task_data / "gsm8k" / "train.jsonl.gz",
    }
    overrides = dataset_overrides(files)
    assert overrides["dataset_path"] == "json"
    assert overrides["dataset_name"] is None
    assert overrides["dataset_kwargs"]["data_files"]["test"].endswith("test.jsonl")


@needs_shared_data
def test_the_shared_data_layout_serves_all_four_tasks() -> None:
    for task in ("mmlu_pro", "gsm8k", "ifeval", "humaneval_plus"):
        assert resolve_files(task, SHARED_DATA)
    assert dataset_overrides(resolve_files("mmlu_pro", SHARED_DATA))["dataset_path"] == "parquet"


def test_missing_and_malformed_task_data_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="task data folder not found"):
        resolve_files("gsm8k", tmp_path / "nope")
    with pytest.raises(UserError, match=r"no test split .*gsm8k/test\.jsonl"):
        resolve_files("gsm8k", tmp_path)
    _jsonl(tmp_path / "gsm8k" / "test.jsonl", [{"prompt": "no question field"}])
    _jsonl(tmp_path / "gsm8k" / "train.jsonl", [{"question": "q", "answer": "#### 1"}])
    with pytest.raises(UserError, match=r"missing field.*question"):
        resolve_files("gsm8k", tmp_path)
    (tmp_path / "gsm8k" / "test.jsonl").write_text("{not json\n")
    with pytest.raises(UserError, match="not valid JSON"):
        resolve_files("gsm8k", tmp_path)
    with pytest.raises(UserError, match="no local-data layout"):
        resolve_files("arc_easy", tmp_path)


def test_code_tasks_are_refused_without_permission(task_data: Path) -> None:
    config = TasksConfig(names=("humaneval_plus",), data_dir=task_data)
    with pytest.raises(UserError, match="--allow-code-execution"):
        check_task("humaneval_plus", config, lambda: ())


def test_unknown_task_names_get_a_suggestion() -> None:
    with pytest.raises(UserError, match='did you mean "gsm8k"'):
        check_task("gsm8kk", TasksConfig(names=("gsm8kk",)), lambda: ("gsm8k", "ifeval"))


# ---------------------------------------------------------------------- items


class _Docs:
    def __init__(self, n: int) -> None:
        self.eval_docs = list(range(n))


@pytest.mark.parametrize(
    ("sizes", "limit", "expected"),
    [
        ([100], 20, [20]),
        ([5], 20, [5]),
        ([10] * 14, 20, [2] * 6 + [1] * 8),
        ([1, 10, 10], 9, [1, 4, 4]),
        ([3, 3], None, [3, 3]),
        ([10, 10, 10], 2, [1, 1, 0]),
    ],
)
def test_limit_takes_the_first_items_spread_over_subtasks(
    sizes: list[int], limit: int | None, expected: list[int]
) -> None:
    leaves = [LeafTask(f"sub{i}", _Docs(n)) for i, n in enumerate(sizes)]
    choose_items(leaves, limit)
    assert [leaf.take for leaf in leaves] == expected


# ---------------------------------------------------------------------- paired statistics


def _items(scores: list[float], prompt: str = "p") -> list[dict[str, Any]]:
    return [
        {"id": f"t/{i}", "subtask": "t", "score": s, "prompt_hash": f"{prompt}{i}"}
        for i, s in enumerate(scores)
    ]


def test_paired_comparison_counts_flips_and_matches_the_statistics() -> None:
    base = [1, 1, 1, 1, 0, 0, 1, 0, 1, 1, 0, 1]
    var = [1, 0, 0, 1, 0, 1, 0, 0, 1, 0, 0, 1]
    paired = compare_items(_items(var), _items(base), seed=0)
    assert (paired.right_to_wrong, paired.wrong_to_right) == (4, 1)
    # exact two-sided McNemar for b=4, c=1: 2 * (1 + 5) / 32
    assert paired.mcnemar_p == pytest.approx(12 / 32)
    assert paired.difference_points.estimate == pytest.approx(100 * (5 - 8) / 12)
    _, low, high = stats.paired_bootstrap_diff_ci(var, base, n_resamples=2000, seed=0)
    assert (paired.difference_points.low, paired.difference_points.high) == pytest.approx(
        (100 * low, 100 * high)
    )
    assert paired.difference_points.low < paired.difference_points.estimate < 0


def test_accuracy_interval_is_wilson_for_binary_scores() -> None:
    record = summarize_task(
        "t", "acc", "none", _items([1.0] * 7 + [0.0] * 13), None,
        seed=0, aggregates={}, settings={}, data_files={}, wall_s=1.0,
    )  # fmt: skip
    assert record.accuracy.estimate == pytest.approx(0.35)
    # Wilson 95% for 7/20, from the closed form with z = 1.959964 (independent arithmetic):
    assert (record.accuracy.low, record.accuracy.high) == pytest.approx((0.1812, 0.5671), abs=1e-4)
    assert record.accuracy_interval == "wilson"


def test_items_with_different_prompts_are_not_paired() -> None:
    with pytest.raises(UserError, match="different prompts"):
        compare_items(_items([1, 0]), _items([1, 0], prompt="q"), seed=0)
    with pytest.raises(UserError, match="not shared"):
        compare_items(_items([1, 0, 1]), _items([1, 0]), seed=0)


# ---------------------------------------------------------------------- punkt and code


def test_punkt_tab_is_written_from_the_pip_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import nltk
    from nltk.data import FileSystemPathPointer
    from nltk.tokenize.punkt import load_punkt_params
    from punkt.data import english

    from quantbench.tasks.punkt import use_punkt_tab

    monkeypatch.setattr(nltk.data, "path", list(nltk.data.path))
    monkeypatch.setenv("NLTK_DATA", "")
    folder = use_punkt_tab(tmp_path)
    assert folder == tmp_path / "tokenizers" / "punkt_tab" / "english"
    params = load_punkt_params(FileSystemPathPointer(str(folder)))
    assert params.abbrev_types == set(english.ABBREV_TYPES)
    assert params.collocations == set(english.COLLOCATIONS)
    assert params.sent_starters == set(english.SENT_STARTERS)
    assert dict(params.ortho_context) == dict(english.ORTHO_CONTEXT)
    text = "Dr. Smith arrived at 5 p.m. on Jan. 3. He left early. Mr. Jones stayed."
    assert len(nltk.sent_tokenize(text)) == 3
    # IFEval's sentence counter loads the model through NLTK's pickle name, redirected to it:
    assert len(nltk.data.load("nltk:tokenizers/punkt/english.pickle").tokenize(text)) == 3


@pytest.fixture
def code_sandbox() -> None:
    """Skip a test that runs generated code where no sandbox can start; fail it instead when
    QUANTBENCH_REQUIRE_SANDBOX=1 (as .ci/run sets), so CI never skips it silently."""
    reason = sandbox_available()
    if reason is None:
        return
    if os.environ.get("QUANTBENCH_REQUIRE_SANDBOX") == "1":
        pytest.fail(f"QUANTBENCH_REQUIRE_SANDBOX=1 but {reason}")
    pytest.skip(f"no code sandbox here: {reason}")


@pytest.mark.usefixtures("code_sandbox")
@needs_shared_data
def test_canonical_humaneval_plus_solutions_pass_and_wrong_ones_fail() -> None:
    from quantbench.sandbox import SandboxLimits
    from quantbench.tasks.code import build_predictions, make_pass_at_1

    pass_at_1 = make_pass_at_1(SandboxLimits(timeout_s=30))
    path = SHARED_DATA / "humanevalplus" / "HumanEvalPlus-OriginFmt.jsonl.gz"
    with gzip.open(path, "rt") as stream:
        rows = [json.loads(line) for line in stream][:3]
    for row in rows:
        reference = row["test"] + f"\ncheck({row['entry_point']})"
        good = build_predictions([[row["canonical_solution"]]], [row])
        bad = build_predictions([["    return None\n"]], [row])
        assert pass_at_1([reference], good) == 1.0, row["task_id"]
        assert pass_at_1([reference], bad) == 0.0, row["task_id"]


# ---------------------------------------------------------------------- a whole study


def _stage_manifests(out: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in (out / "stages").glob("*/*/manifest.json")}


def test_study_runs_tasks_offline_pairs_them_and_caches_them(
    tiny_model: Path, task_data: Path, tmp_path: Path
) -> None:
    """GSM8K, IFEval and MMLU-Pro (a group of 14 subject tasks, its answer taken by
    lm-eval's regex filter) through lm-eval in a real study. They run no generated code, so
    this test needs no sandbox (it was skipped with the code tasks wherever bubblewrap could
    not start); HumanEval+ through a study is the next test's."""
    out = tmp_path / "out"
    evaluation = {
        "metrics": [],
        "tasks": {
            "names": ["gsm8k", "ifeval", "mmlu_pro"],
            "data_dir": str(task_data),
            "limit": 2,
            "num_fewshot": 0,
            "max_gen_tokens": 6,
        },
    }
    study = tiny_study_yaml(
        tmp_path / "study.yaml", tiny_model, out, ["bf16", "fp8-dynamic"], evaluation
    )
    result = run_cli("run", "--config", str(study))
    assert result.returncode == 0, result.stderr[-3000:]
    data = read_json(out / "results.json")
    variants = {v["name"]: v for v in data["variants"]}  # type: ignore[attr-defined]
    for name in ("bf16", "fp8-dynamic"):
        tasks = variants[name]["metrics"]["tasks"]
        assert set(tasks) == {"gsm8k", "ifeval", "mmlu_pro"}, variants[name]["metrics"]
        assert tasks["gsm8k"]["n_items"] == 2
        assert tasks["mmlu_pro"]["n_items"] == 2 and tasks["mmlu_pro"]["metric"] == "exact_match"
        assert tasks["gsm8k"]["settings"]["num_fewshot"] == {"gsm8k": 0}
        assert tasks["gsm8k"]["settings"]["max_gen_tokens"] == 6
        paired = tasks["ifeval"]["vs_baseline"]
        assert paired["n_paired"] == 2
    assert "## Task accuracy" in (out / "report.md").read_text()
    assert 'id="tasks"' in (out / "report.html").read_text()
    header = (out / "results.csv").read_text().splitlines()[0]
    assert "gsm8k_accuracy" in header and "ifeval_mcnemar_p" in header
    assert "mmlu_pro_accuracy" in header
    assert "task accuracy" in result.stdout

    # A rerun computes nothing: every stage manifest is the one the first run wrote, and no
    # new stage appears. (The old check, `"cached" or "done" in stderr`, also matched a run
    # that recomputed everything: failing first, with the tasks stage folders deleted before
    # the rerun, "done" was printed and the old check passed; this one fails.)
    manifests = _stage_manifests(out)
    assert any(p.parent.parent.name.startswith("tasks.") for p in manifests), sorted(manifests)
    again = run_cli("run", "--config", str(study))
    assert again.returncode == 0, again.stderr[-3000:]
    assert _stage_manifests(out) == manifests
    assert read_json(out / "results.json")["variants"] == data["variants"]


@pytest.mark.usefixtures("code_sandbox")
def test_study_runs_humaneval_plus_in_the_sandbox(
    tiny_model: Path, task_data: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    evaluation = {
        "metrics": [],
        "tasks": {
            "names": ["humaneval_plus"],
            "data_dir": str(task_data),
            "max_gen_tokens": 6,
            "allow_code_execution": True,
        },
    }
    study = tiny_study_yaml(tmp_path / "study.yaml", tiny_model, out, ["bf16"], evaluation)
    result = run_cli("run", "--config", str(study))
    assert result.returncode == 0, result.stderr[-3000:]
    data = read_json(out / "results.json")
    (variant,) = data["variants"]  # type: ignore[misc]
    record = variant["metrics"]["tasks"]["humaneval_plus"]
    assert record["n_items"] == 1
    assert record["settings"]["sandbox"]["network"].startswith("none")
    # A random tiny model writes no working `add`: the program ran, contained, and failed.
    assert record["accuracy"]["estimate"] == 0.0


def test_cli_refuses_code_tasks_before_any_compute(tiny_model: Path, task_data: Path) -> None:
    result = run_cli(
        "run",
        "--model",
        str(tiny_model),
        "--schemes",
        "bf16",
        "--tasks",
        "humaneval_plus",
        "--task-data",
        str(task_data),
        "--out",
        str(task_data.parent / "refused"),
    )
    assert result.returncode == 2
    assert "--allow-code-execution" in result.stderr
    assert not (task_data.parent / "refused" / "stages" / "quantize").exists()


def test_paired_accuracy_difference_interval_covers_the_truth_in_simulation() -> None:
    """Items differ in difficulty (shared by both variants); the variant loses an item the
    baseline got right with probability 0.2 and wins one it got wrong with probability 0.1.
    95% intervals should cover the true difference in about 95% of repeated experiments (the
    percentile bootstrap runs a little narrow at this size: 93-94% is typical)."""
    rng = np.random.default_rng(7)
    reps, n, lose, gain = 400, 150, 0.2, 0.1
    difficulty = rng.uniform(0.2, 0.9, size=n)
    true_points = 100 * float(np.mean(-lose * difficulty + gain * (1 - difficulty)))
    covered = 0
    for r in range(reps):
        base = (rng.random(n) < difficulty).astype(float)
        flip = rng.random(n)
        variant = np.where(base == 1.0, flip >= lose, flip < gain).astype(float)
        d = compare_items(_items(list(variant)), _items(list(base)), seed=r).difference_points
        covered += d.low <= true_points <= d.high
    assert 0.91 <= covered / reps <= 0.98, covered / reps


def test_accuracy_drop_constraint_reads_task_records() -> None:
    from quantbench.recommend import accuracy_drop_points
    from quantbench.results import VariantMetrics, VariantResult

    def variant(name: str, scores: list[float], base: list[float] | None) -> VariantResult:
        record = summarize_task(
            "gsm8k", "exact_match", "strict-match", _items(scores),
            _items(base) if base else None,
            seed=0, aggregates={}, settings={}, data_files={}, wall_s=1.0,
        )  # fmt: skip
        return VariantResult(
            name=name, scheme=name, status="ok", metrics=VariantMetrics(tasks={"gsm8k": record})
        )

    base_scores = [1.0, 1.0, 1.0, 0.0]
    baseline = variant("bf16", base_scores, None)
    quantized = variant("w4a16-gptq", [1.0, 0.0, 1.0, 0.0], base_scores)
    drop, task, why = accuracy_drop_points(quantized, baseline)
    assert (drop, task, why) == (pytest.approx(25.0), "gsm8k", "")


def test_compare_keeps_tasks_only_when_studies_ran_the_same_items(tmp_path: Path) -> None:
    from quantbench.compare import compare_studies
    from quantbench.results import StudyResults, VariantMetrics, VariantResult
    from quantbench.study_files import save_results

    def study(folder: str, limit: int) -> Path:
        settings = {"items_per_subtask": {"gsm8k": limit}, "num_fewshot": {"gsm8k": 5}}
        record = summarize_task(
            "gsm8k", "exact_match", "strict-match", _items([1.0, 0.0]), None,
            seed=0, aggregates={}, settings=settings, data_files={}, wall_s=1.0,
        )  # fmt: skip
        results = StudyResults(
            quantbench_version="0.1.0",
            created_at="2026-01-01T00:00:00+00:00",
            model={"spec": "m"},
            config={},
            variants=[
                VariantResult(
                    name="bf16",
                    scheme="bf16",
                    status="ok",
                    metrics=VariantMetrics(tasks={"gsm8k": record}),
                )
            ],
        )
        save_results(tmp_path / folder, results, model_cards=False)
        return tmp_path / folder

    same = compare_studies([study("a", 20), study("b", 20)])
    assert all("gsm8k" in v.metrics.tasks for v in same.variants)
    different = compare_studies([study("c", 20), study("d", 50)])
    assert all(not v.metrics.tasks for v in different.variants)
    assert any("gsm8k" in note and "not compared" in note for note in different.notes)


def test_workers_get_absolute_task_data_paths(
    task_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from quantbench.config import EvaluationConfig
    from quantbench.evaluate import with_absolute_paths

    monkeypatch.chdir(task_data.parent)
    config = EvaluationConfig(tasks=TasksConfig(names=("gsm8k",), data_dir=Path(task_data.name)))
    resolved = with_absolute_paths(config)
    assert resolved.tasks.data_dir == task_data.resolve()
    assert resolved.generations.prompts == "builtin"


def test_generation_cap_lowers_limits_and_keeps_smaller_ones() -> None:
    from types import SimpleNamespace

    from quantbench.tasks.harness import cap_generation

    class FakeTask:
        def __init__(self, output_type: str, kwargs: dict[str, Any]) -> None:
            self.config = SimpleNamespace(output_type=output_type, generation_kwargs=kwargs)

        def set_config(self, key: str, value: Any) -> None:
            setattr(self.config, key, value)

    long, short, unset = (
        FakeTask("generate_until", {"max_gen_toks": 2048, "until": ["Q:"]}),
        FakeTask("generate_until", {"max_gen_toks": 16}),
        FakeTask("generate_until", {}),
    )
    choice = FakeTask("multiple_choice", {})
    for task in (long, short, unset, choice):
        cap_generation(task, 100)
    assert long.config.generation_kwargs == {"max_gen_toks": 100, "until": ["Q:"]}
    assert short.config.generation_kwargs["max_gen_toks"] == 16
    assert unset.config.generation_kwargs["max_gen_toks"] == 100
    assert choice.config.generation_kwargs == {}


def test_a_sandbox_that_cannot_start_fails_the_task_instead_of_scoring_zero(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from quantbench.sandbox import SandboxLimits, SandboxResult
    from quantbench.tasks import code

    monkeypatch.setattr(
        code, "run_untrusted", lambda *_: SandboxResult("error", 1, 0.1, "bwrap: no namespaces")
    )
    with pytest.raises(code.SandboxError, match="did not start"):
        code.make_pass_at_1(SandboxLimits())(["check(f)"], [["def f(): pass"]])
