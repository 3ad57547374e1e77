"""The study's stages as one plan: what `quantbench run` executes and `quantbench plan` prints.

`plan_study` turns a resolved config and model into every stage of the study, in the order
`run` executes them: calibration sets, the evaluation corpus, the sensitivity screen that
mixed-precision variants are searched from, one quantize stage per variant,
then, the baseline first, each variant's metric stages (one per task for the tasks metric).
Each `Stage` carries its content key, the stages it reads (`inputs`), whether it reads the
baseline's stages, where it runs (this process, or a worker an executor places) and, through
`StudyStages.worker_resources`, what its worker asks the executor for. Nothing is computed
here: keys hash the model's files and the options, and no model is loaded.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from quantbench.config import SchemeEntry, StudyConfig, model_labels
from quantbench.evaluate import EvalPlan, evaluation_stage_bytes, input_stage, plan_evaluation
from quantbench.executors.base import Resources
from quantbench.executors.resources import stage_resources
from quantbench.hardware import gpus_visible
from quantbench.metrics import get_metric, load_metric, split_stage_name
from quantbench.metrics.tasks import planned_work
from quantbench.models import ResolvedModel, inspect_model, resolve_model
from quantbench.output import OutputFolder
from quantbench.plan import StudyPlan, build_plan
from quantbench.preflight import available_memory_bytes, preflight_variants
from quantbench.quantize import calibration_dtype_here
from quantbench.schemes import get_scheme
from quantbench.store import StageRef, StageStore

RunsOn = Literal["driver", "worker"]


@dataclass(frozen=True)
class Stage:
    """One stage of the study: its kind (calibration, corpus, quantize, or a metric stage
    such as `scores` or `tasks.gsm8k`), the variant it belongs to, its content key and the
    stages whose outputs it reads."""

    kind: str
    variant: str
    ref: StageRef
    runs_on: RunsOn
    inputs: tuple[StageRef, ...] = ()
    reads_baseline: bool = False
    """It reads the baseline's stages, so it runs after the baseline's evaluation."""
    axes: dict[str, Any] = field(default_factory=dict)
    alone: bool = False
    """Its figures are times: its worker runs with no other stage running."""


@dataclass(frozen=True)
class StudyStages:
    """The whole plan of one model's study: the config (with its baseline added when a
    metric compares against one), the quantize plan, the evaluation plan and every stage."""

    config: StudyConfig
    plan: StudyPlan
    evaluation: EvalPlan | None
    stages: tuple[Stage, ...]

    def refs(self) -> list[StageRef]:
        """Every stage the study reads or writes."""
        return [s.ref for s in self.stages]

    def worker_resources(
        self,
        kind: Literal["quantize", "evaluate"],
        *,
        memory_bytes: int | None = None,
        variant: str | None = None,
    ) -> Resources:
        """What a worker of `kind` asks the executor for: quantization by pre-flight's memory
        estimate (`memory_bytes`), `variant`'s evaluation by its own estimate (the models it
        holds and one batch of logits, `evaluate.evaluation_stage_bytes`); a GPU where the
        driver sees one (and evaluation is not told to stay on the CPU)."""
        if kind == "quantize":
            return stage_resources("quantize", self.config.execution, memory_bytes, gpus_visible())
        evaluate_gpu = gpus_visible() and self.config.evaluation.device != "cpu"
        if self.evaluation is not None and variant is not None:
            memory_bytes = evaluation_stage_bytes(self.plan, self.evaluation, variant)
        return stage_resources("evaluate", self.config.execution, memory_bytes, evaluate_gpu)


def with_baseline(config: StudyConfig, on_note: Callable[[str], None]) -> StudyConfig:
    """Add a bf16 baseline when metrics compare against one and the study lists none."""
    comparing = any(get_metric(name).baseline_inputs for name in config.evaluation.metric_names())
    if not comparing or any(not get_scheme(e.scheme).quantizes for e in config.schemes):
        return config
    on_note("no baseline scheme listed: adding bf16, the reference for comparisons")
    return config.model_copy(update={"schemes": (SchemeEntry(scheme="bf16"), *config.schemes)})


def plan_study(
    config: StudyConfig, model: ResolvedModel, on_note: Callable[[str], None]
) -> StudyStages:
    """Every stage of one model's study, in execution order (see the module docstring)."""
    config = with_baseline(config, on_note)
    plan = build_plan(config, model)
    evaluation = (
        plan_evaluation(plan, config.evaluation) if config.evaluation.metric_names() else None
    )
    stages: list[Stage] = []
    for ref, settings in plan.calibrations.values():
        label = f"{settings.num_samples} × {settings.seq_len} from {settings.source}"
        stages.append(Stage("calibration", label, ref, "driver"))
    if evaluation is not None and evaluation.corpus is not None:
        stages.append(Stage("corpus", "(shared)", evaluation.corpus, "driver"))
    screens: dict[str, Stage] = {}
    for variant in plan.variants:
        if variant.sensitivity is not None and variant.calibration is not None:
            screens.setdefault(
                variant.sensitivity.key,
                Stage(
                    "sensitivity", "(shared)", variant.sensitivity, "worker", (variant.calibration,)
                ),
            )
    stages += screens.values()
    for variant in plan.variants:
        inputs = tuple(ref for ref in (variant.calibration, variant.sensitivity) if ref)
        stages.append(
            Stage("quantize", variant.name, variant.quantize, "worker", inputs, axes=variant.axes)
        )
    if evaluation is not None:
        stages += _metric_stages(plan, evaluation)
    return StudyStages(config, plan, evaluation, tuple(stages))


def _metric_stages(plan: StudyPlan, evaluation: EvalPlan) -> list[Stage]:
    baseline = evaluation.stages.get(evaluation.baseline or "", {})
    stages: list[Stage] = []
    for variant in evaluation.order(plan.variants):
        own = evaluation.stages.get(variant.name, {})
        for name, ref in own.items():
            metric_name, param = split_stage_name(name)
            metric = load_metric(metric_name)
            reads_baseline = bool(metric.baseline_inputs) and variant.name != evaluation.baseline
            inputs = [variant.quantize]
            if metric.uses_corpus and evaluation.corpus is not None:
                inputs.append(evaluation.corpus)
            inputs += [own[input_stage(n, metric_name, param)] for n in metric.own_inputs]
            if reads_baseline:
                inputs += [
                    baseline[input_stage(n, metric_name, param)] for n in metric.baseline_inputs
                ]
            stages.append(
                Stage(
                    name,
                    variant.name,
                    ref,
                    "worker",
                    tuple(inputs),
                    reads_baseline,
                    variant.axes,
                    alone=bool(getattr(metric, "timed", False)),
                )
            )
    return stages


@dataclass(frozen=True)
class PlannedStage:
    """A stage as `quantbench plan` lists it: the plan's stage, whether the output folder
    holds it finished, and the resources its worker will request."""

    stage: str
    variant: str
    key: str
    done: bool
    runs_on: RunsOn
    resources: Resources = field(default_factory=dict)
    axes: dict[str, Any] = field(default_factory=dict)
    alone: bool = False
    work: str = ""
    """For a pending task stage: its items and estimated duration (`TaskWork.describe`)."""


def inventory(
    config: StudyConfig, on_status: Callable[[str], None] = lambda _: None
) -> list[PlannedStage]:
    """The study's stages as `quantbench plan` prints them, without running any (model
    after model, variants named `<model label>/<variant>`, for a study of several models).
    Resolving the model converts the built-in GGUF once into the cache (keys hash its files);
    shapes are read on the meta device for pre-flight's memory estimates."""

    if len(config.models()) == 1:
        return _inventory_one(config, on_status)
    output = OutputFolder.open(config.out)
    return [
        dataclasses.replace(stage, variant=f"{label}/{stage.variant}")
        for label, spec in zip(model_labels(config.models()), config.models(), strict=True)
        for stage in _inventory_one(config.for_model(spec, output.child(label)), on_status)
    ]


def _inventory_one(config: StudyConfig, on_status: Callable[[str], None]) -> list[PlannedStage]:

    output = OutputFolder.open(config.out)
    store = output.stages()
    (spec,) = config.models()
    model = resolve_model(
        spec, on_status=on_status, allow_pickle=config.allow_pickle, tokenizer=config.tokenizer
    )
    study = plan_study(config, model, on_status)
    damaged = set()
    for ref in study.refs():
        damage = store.verify(ref)
        if damage is not None:
            on_status(f"damaged: {output.child(damage.file)} {damage.problem}; `run` recomputes it")
            damaged.add(ref)

    def done(ref: StageRef) -> bool:
        return ref not in damaged and store.is_done(ref)

    memory = {
        name: outcome.memory_bytes
        for name, outcome in preflight_variants(
            list(study.plan.variants),
            inspect_model(model.path),
            study.config.calibration.default,
            available_memory_bytes(study.config.execution.memory_limit_gib),
            calibration_dtype_here(study.config.calibration.compute_dtype),
        ).items()
    }

    def resources(stage: Stage) -> Resources:
        if stage.runs_on == "driver":
            return {}
        if stage.kind == "quantize":
            return study.worker_resources("quantize", memory_bytes=memory.get(stage.variant))
        if stage.kind == "sensitivity":
            peak = max((m for m in memory.values() if m is not None), default=None)
            return study.worker_resources("quantize", memory_bytes=peak)
        return study.worker_resources("evaluate", variant=stage.variant)

    return [
        PlannedStage(
            s.kind,
            s.variant,
            s.ref.key,
            done(s.ref),
            s.runs_on,
            resources(s),
            s.axes,
            s.alone,
            "" if done(s.ref) else _task_work(study, store, s),
        )
        for s in study.stages
    ]


def _task_work(study: StudyStages, store: StageStore, stage: Stage) -> str:
    """A pending task stage's items and estimated duration, from the rate of what this
    folder has measured: the stage's own chunks saved by a killed run, else finished stages
    of the same task on the same backend (items over scoring seconds)."""
    metric, task = split_stage_name(stage.kind)
    if metric != "tasks" or task is None or study.evaluation is None:
        return ""
    config = study.evaluation.config
    backend = config.backend_for("tasks")
    saved = []
    for path in sorted(store.partial(stage.ref, create=False).glob("chunk-*.json")):
        try:
            piece = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if piece.get("scoring_s"):
            saved.append((sum(piece["counts"].values()), float(piece["scoring_s"])))
    finished = []
    for manifest in store.manifests(stage.kind):
        record = manifest.get("record", {})
        settings = record.get("settings", {})
        if settings.get("backend", {}).get("name") == backend and record.get("wall_s"):
            scored = int(record["n_items"]) - int(settings.get("resumed_items") or 0)
            finished.append((scored, float(record["wall_s"])))
    return planned_work(task, config.tasks, saved, finished).describe()
