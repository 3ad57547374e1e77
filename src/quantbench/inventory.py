"""Every stage a study needs, without running any: what `quantbench plan` prints.

For each stage: its kind, the variant it belongs to, its content key, whether the output
folder already holds it, where it runs (the driver, or a worker that an executor may place
on another node) and the resources a cluster task for it will request. Planning resolves
the model, since stage keys hash its files (for the built-in model, that is the one-time
GGUF conversion into the cache), and reads shapes on the meta device; nothing is quantized
or evaluated.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from quantbench.config import StudyConfig
from quantbench.executors.base import Resources
from quantbench.store import StageRef


@dataclass(frozen=True)
class PlannedStage:
    stage: str
    variant: str
    key: str
    done: bool
    runs_on: str
    """'driver' (this process) or 'worker' (placed by the executor)."""
    resources: Resources = field(default_factory=dict)
    axes: dict[str, Any] = field(default_factory=dict)


def plan_stages(
    config: StudyConfig, on_status: Callable[[str], None] = lambda _: None
) -> list[PlannedStage]:
    """The study's stages in the order they would run (model after model, variants named
    `<model label>/<variant>`, for a study of several models)."""
    from quantbench.config import model_labels
    from quantbench.output import OutputFolder

    if len(config.models()) == 1:
        return _plan_one(config, on_status)
    output = OutputFolder.open(config.out)
    return [
        dataclasses.replace(stage, variant=f"{label}/{stage.variant}")
        for label, spec in zip(model_labels(config.models()), config.models(), strict=True)
        for stage in _plan_one(config.for_model(spec, output.child(label)), on_status)
    ]


def _plan_one(config: StudyConfig, on_status: Callable[[str], None]) -> list[PlannedStage]:
    from quantbench.evaluate import evaluation_memory_bytes, plan_evaluation
    from quantbench.executors.resources import gpus_visible, stage_resources
    from quantbench.models import inspect_model, resolve_model
    from quantbench.output import OutputFolder
    from quantbench.plan import build_plan
    from quantbench.preflight import available_memory_bytes, preflight_variants
    from quantbench.quantize import calibration_dtype_here
    from quantbench.study import planned_stages, with_baseline

    output = OutputFolder.open(config.out)
    store = output.stages()
    (spec,) = config.models()
    model = resolve_model(
        spec, on_status=on_status, allow_pickle=config.allow_pickle, tokenizer=config.tokenizer
    )
    config = with_baseline(config, on_status)
    plan = build_plan(config, model)
    eval_plan = (
        plan_evaluation(plan, config.evaluation) if config.evaluation.metric_names() else None
    )
    damaged = set()
    for ref in planned_stages(plan, eval_plan):
        damage = store.verify(ref)
        if damage is not None:
            on_status(f"damaged: {output.child(damage.file)} {damage.problem}; `run` recomputes it")
            damaged.add(ref)

    def done(ref: StageRef) -> bool:
        return ref not in damaged and store.is_done(ref)

    info = inspect_model(model.path)
    memory = {
        name: outcome.memory_bytes
        for name, outcome in preflight_variants(
            list(plan.variants),
            info,
            config.calibration.default,
            available_memory_bytes(),
            calibration_dtype_here(config.calibration.compute_dtype),
        ).items()
    }
    gpu = gpus_visible()
    stages: list[PlannedStage] = []
    for ref, settings in plan.calibrations.values():
        label = f"{settings.num_samples} × {settings.seq_len} from {settings.source}"
        stages.append(PlannedStage("calibration", label, ref.key, done(ref), "driver"))
    if eval_plan and eval_plan.corpus:
        corpus = eval_plan.corpus
        stages.append(PlannedStage("corpus", "(shared)", corpus.key, done(corpus), "driver"))
    for variant in plan.variants:
        stages.append(
            PlannedStage(
                "quantize",
                variant.name,
                variant.quantize.key,
                done(variant.quantize),
                "worker",
                stage_resources("quantize", config.execution, memory.get(variant.name), gpu),
                variant.axes,
            )
        )
    if eval_plan:
        evaluate_gpu = gpu and config.evaluation.device != "cpu"
        for variant in eval_plan.order(plan.variants):
            # `run` asks for memory by the artifact's weights once the artifact exists
            disk = (
                store.manifest(variant.quantize).get("disk_bytes")
                if done(variant.quantize)
                else None
            )
            request = stage_resources(
                "evaluate", config.execution, evaluation_memory_bytes(disk), evaluate_gpu
            )
            for name, ref in eval_plan.stages.get(variant.name, {}).items():
                stages.append(
                    PlannedStage(
                        name,
                        variant.name,
                        ref.key,
                        done(ref),
                        "worker",
                        request,
                        variant.axes,
                    )
                )
    return stages
