"""Evaluate every variant (the baseline first) in its own worker process.

The parent plans one content-keyed stage per (variant, metric): the key covers the metric's
config slice, the variant's quantize stage, the corpus, the stages it reads (its own and the
baseline's) and the backend. Pending stages of one variant run in one worker process that
loads the artifact once; a metric that fails is recorded with its reason and the others go
on. Finished stages are never recomputed.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quantbench.backends import get_backend
from quantbench.backends.base import Backend, LoadInfo
from quantbench.backends.vllm import PROTOCOL
from quantbench.config import EvaluationConfig
from quantbench.corpus import corpus_ref, read_windows
from quantbench.envs import vllm_python, vllm_version
from quantbench.executors.base import Launch, Resources
from quantbench.hardware import gpus_visible, hardware_here
from quantbench.memory import scores_stage_bytes
from quantbench.metrics import REGISTRY, load_metric, split_stage_name, stage_name, stages_for
from quantbench.metrics.base import EvalContext
from quantbench.models import ModelInfo, has_chat_template, inspect_model
from quantbench.output import OutputFolder
from quantbench.plan import StudyPlan, VariantPlan, library_versions
from quantbench.preflight import SCORE_BATCH_WINDOWS, EvaluationMemory, available_memory_bytes
from quantbench.process.child import (
    AnonymousPeak,
    CoreGrant,
    die_with_parent,
    emit,
    limit_threads,
    peak_rss_bytes,
    run_on_cpus,
    torch_threads,
)
from quantbench.process.requests import (
    DivergenceChoice,
    DivergenceMethod,
    EvaluateRequest,
    MetricStage,
    read_request,
    request_json,
    stage_record,
)
from quantbench.process.workers import failure, run_python_worker
from quantbench.quantize import ARTIFACT_DIR
from quantbench.results import VariantMetrics
from quantbench.store import StageRef, StageStore, content_key

FINISHED = "finished"
"""The worker's last event; it carries the reason of every metric that failed."""
EVALUATE_STAGE_VERSION = 1


DIVERGENCE_METRICS = ("scores", "divergence")
"""The stages whose figures depend on the divergence method (it is part of their keys)."""


@dataclass(frozen=True)
class DivergencePlan:
    """How every variant's divergence is computed in this study, and why."""

    method: DivergenceMethod
    detail: str
    estimate_bytes: int = 0
    """Estimated peak memory of the exact method in one evaluation worker."""


@dataclass(frozen=True)
class EvalPlan:
    config: EvaluationConfig
    corpus: StageRef | None
    baseline: str | None
    stages: dict[str, dict[str, StageRef]]
    """variant name → stage name → ref, in execution order."""
    divergence: DivergencePlan = DivergencePlan("exact", "")
    baseline_artifact: StageRef | None = None
    """The baseline's quantize stage: variants load its artifact for the exact method."""
    memory: EvaluationMemory | None = None
    """Where and in what dtype the hf backend runs the models, and the room there, as
    planned (None when no metric runs a model through it)."""

    def order(self, variants: tuple[VariantPlan, ...]) -> list[VariantPlan]:
        """The baseline first: the others read its stages."""
        return sorted(variants, key=lambda v: v.name != self.baseline)


NO_DIVERGENCE = DivergencePlan(
    "topk_tail",
    "divergence is not among the study's metrics, so the scores pass does not recompute the "
    "baseline next to each variant (the KL it keeps comes from the baseline's stored top-k "
    "+ tail, a lower bound)",
)
"""Perplexity alone needs only each variant's own pass: recomputing the baseline beside every
variant for an exact KL nobody asked for doubled the scoring time of every quantized
variant."""


def baseline_name(variants: tuple[VariantPlan, ...]) -> str | None:
    return next((v.name for v in variants if not v.scheme.quantizes), None)


def plan_divergence(backend: str, required_bytes: int, available_bytes: int) -> DivergencePlan:
    """Exact divergence when the scores backend can hold the baseline next to the variant
    and both fit in the memory available now; otherwise the stored top-k + tail, saying why.

    The vllm backend runs one engine per worker (two engines would contend for the same
    device memory pool), so it always takes the top-k + tail method.
    """
    gib = float(1 << 30)
    if backend != "hf":
        return DivergencePlan(
            "topk_tail",
            f"the {backend} backend holds one model per worker, so KL comes from the "
            "baseline's stored top-k + tail (a lower bound of the exact KL)",
            required_bytes,
        )
    if required_bytes > available_bytes:
        return DivergencePlan(
            "topk_tail",
            f"the baseline next to the variant needs about {required_bytes / gib:.1f} GiB "
            f"but {available_bytes / gib:.1f} GiB is available, so KL comes from the "
            "baseline's stored top-k + tail (a lower bound of the exact KL)",
            required_bytes,
        )
    return DivergencePlan(
        "exact",
        "the baseline's full distribution, recomputed next to the variant in the same worker "
        f"(about {required_bytes / gib:.1f} GiB of {available_bytes / gib:.1f} GiB available)",
        required_bytes,
    )


def _divergence_plan(
    plan: StudyPlan, config: EvaluationConfig, memory: EvaluationMemory | None
) -> DivergencePlan:
    """`plan_divergence` for this study's model, corpus, backend and device."""
    if memory is None:  # no model runs through the hf backend: the method is moot there
        return plan_divergence(config.backend_for("scores"), 0, 0)
    required = max(
        (_scores_bytes(plan, memory, v, with_baseline=True) for v in plan.variants),
        default=0,
    )
    return plan_divergence(config.backend_for("scores"), required, memory.available_bytes)


def _scores_bytes(
    plan: StudyPlan, memory: EvaluationMemory, variant: VariantPlan, with_baseline: bool
) -> int:
    """`memory.scores_stage_bytes` for `variant`'s model (and the baseline beside it)."""
    return scores_stage_bytes(
        _model_info(Path(plan.model.path)),
        form=variant.scheme.model_form,
        with_baseline=with_baseline and variant.scheme.quantizes,
        compute_dtype=memory.compute_dtype,
        window=memory.window,
        batch_windows=SCORE_BATCH_WINDOWS,
    ).total_bytes


@functools.lru_cache(maxsize=8)
def _model_info(path: Path) -> ModelInfo:
    return inspect_model(path)


def evaluation_stage_bytes(plan: StudyPlan, eval_plan: EvalPlan, variant: str) -> int | None:
    """Estimated peak memory of `variant`'s evaluation worker, bytes: its model scoring one
    batch of windows and, when it scores by the exact method, the baseline beside it (None
    when no metric runs a model through the hf backend)."""
    memory = eval_plan.memory
    planned = next((v for v in plan.variants if v.name == variant), None)
    if memory is None or planned is None:
        return None
    exact = (
        variant != eval_plan.baseline
        and eval_plan.divergence.method == "exact"
        and "scores" in eval_plan.stages.get(variant, {})
    )
    return _scores_bytes(plan, memory, planned, with_baseline=exact)


def evaluation_memory(plan: StudyPlan, config: EvaluationConfig) -> EvaluationMemory | None:
    """Where and in what dtype the hf backend will run this study's models, and the memory
    free there (the GPU's on CUDA, else RAM capped by `execution.memory_limit_gib`); None
    when no metric runs a model through the hf backend."""
    if not any(
        m.needs_model and config.backend_for(m.name) == "hf"
        for m in stages_for(config.metric_names())
    ):
        return None
    gpu = gpus_visible()
    cuda = gpu and config.device != "cpu"
    limit = plan.config.execution.memory_limit_gib
    available = available_memory_bytes(limit)
    if cuda:
        import torch

        available = int(torch.cuda.mem_get_info()[0])
    dtype = scoring_dtype(config.dtype, Path(plan.model.path), cuda)
    return EvaluationMemory(available, "cuda" if cuda else "cpu", dtype, config.corpus.window, gpu)


def scoring_dtype(requested: str, model: Path, cuda: bool) -> str:
    """The dtype the hf backend will compute `model` in (`backends.hf.resolve_compute_dtype`
    decides the same when it loads): the one asked for, else the saved one, except float32 on
    a CPU without bf16 matmuls in hardware."""
    if requested != "auto":
        return requested
    saved = json.loads((model / "config.json").read_text())
    saved_dtype = str(saved.get("torch_dtype") or saved.get("dtype") or "bfloat16")
    if not cuda and saved_dtype != "float32" and not hardware_here("cpu").native_bf16():
        return "float32"
    return saved_dtype


def with_absolute_paths(config: EvaluationConfig) -> EvaluationConfig:
    """Workers may run elsewhere (another directory, another node on a shared filesystem):
    local files they read are named by absolute paths."""
    tasks, generations = config.tasks, config.generations
    if tasks.data_dir is not None:
        tasks = tasks.model_copy(update={"data_dir": tasks.data_dir.expanduser().resolve()})
    prompts = Path(generations.prompts).expanduser()
    if generations.prompts != "builtin" and prompts.exists():
        generations = generations.model_copy(update={"prompts": str(prompts.resolve())})
    return config.model_copy(update={"tasks": tasks, "generations": generations})


def with_chat_template_choice(config: EvaluationConfig, tokenizer_folder: Path) -> EvaluationConfig:
    """Settle `apply_chat_template` left open: on when the model's tokenizer has a chat
    template (instruction-tuned models are served through it), off for base models. The
    settled value is what task stages key on and record."""
    tasks = config.tasks
    if not tasks.names or tasks.apply_chat_template is not None:
        return config
    chosen = has_chat_template(tokenizer_folder)
    return config.model_copy(
        update={"tasks": tasks.model_copy(update={"apply_chat_template": chosen})}
    )


def plan_evaluation(plan: StudyPlan, config: EvaluationConfig) -> EvalPlan:

    config = with_chat_template_choice(with_absolute_paths(config), plan.model.tokenizer_folder)
    metrics = stages_for(config.metric_names())
    corpus = corpus_ref(config.corpus, plan.model) if any(m.uses_corpus for m in metrics) else None
    baseline = baseline_name(plan.variants)
    versions = library_versions(("torch", "transformers", "compressed-tensors"))
    runtimes: dict[str, str] = {}
    if any(config.backend_for(m.name) == "vllm" for m in metrics):
        version = vllm_version(vllm_python(config.vllm.python))
        runtimes["vllm"] = f"{version}, worker protocol {PROTOCOL}"
    stages: dict[str, dict[str, StageRef]] = {}
    ordered = sorted(plan.variants, key=lambda v: v.name != baseline)
    memory = evaluation_memory(plan, config)
    if baseline is not None and "divergence" in config.metric_names():
        divergence = _divergence_plan(plan, config, memory)
    elif baseline is not None and any(m.name in DIVERGENCE_METRICS for m in metrics):
        divergence = NO_DIVERGENCE
    else:
        divergence = DivergencePlan("exact", "")
    params_of = {m.name: _params(m, config) for m in metrics}
    configs = {
        (m.name, p): m.key_config(config, p) if p else m.key_config(config)  # type: ignore[call-arg]
        for m in metrics
        for p in params_of[m.name]
    }
    for variant in ordered:
        own: dict[str, StageRef] = {}
        for metric in metrics:
            for param in params_of[metric.name]:
                needs_baseline = bool(metric.baseline_inputs)
                if needs_baseline and baseline is None:
                    continue
                name = stage_name(metric.name, param)
                baseline_keys: Any = "self"
                if variant.name != baseline and baseline is not None:
                    baseline_keys = {
                        n: stages[baseline][input_stage(n, metric.name, param)].key
                        for n in metric.baseline_inputs
                    }
                stage_config = configs[(metric.name, param)]
                if metric.name in DIVERGENCE_METRICS:
                    stage_config = {**stage_config, "divergence_method": divergence.method}
                payload = {
                    "stage": metric.name,
                    "v": [EVALUATE_STAGE_VERSION, metric.version],
                    "config": stage_config,
                    "variant": variant.quantize.key,
                    "backend": _with_runtime(config.backend_key(metric.name), runtimes),
                    "corpus": corpus.key if metric.uses_corpus and corpus else None,
                    "own": {n: own[n].key for n in metric.own_inputs},
                    "baseline": baseline_keys,
                    "versions": versions,
                }
                own[name] = StageRef(name, content_key(payload))
        stages[variant.name] = own
    baseline_plan = next((v for v in plan.variants if v.name == baseline), None)
    return EvalPlan(
        config,
        corpus,
        baseline,
        stages,
        divergence,
        baseline_plan.quantize if baseline_plan is not None else None,
        memory,
    )


def _params(metric: Any, config: EvaluationConfig) -> tuple[str | None, ...]:
    params = getattr(metric, "params", None)
    return tuple(params(config)) if params is not None else (None,)


def _with_runtime(key: dict[str, Any], runtimes: dict[str, str]) -> dict[str, Any]:
    """A backend key with the version of the runtime it runs in, when that is not
    quantbench's environment (another vLLM, or another way of driving it, gives other
    figures)."""
    runtime = runtimes.get(str(key["name"]))
    return {**key, "runtime": runtime} if runtime else key


def input_stage(input_metric: str, metric: str, param: str | None) -> str:
    """The stage a metric reads: its own parameter's stage when it reads its own metric."""

    return stage_name(input_metric, param if input_metric == metric else None)


def is_timed(stage: str) -> bool:
    """Whether the metric stage `stage` measures time, so runs in a worker of its own with
    no other stage running (a plugin's metric that does not say is not timed)."""
    return bool(getattr(load_metric(split_stage_name(stage)[0]), "timed", False))


def pending_stages(
    eval_plan: EvalPlan, variant: str, store: StageStore, timed: bool
) -> list[tuple[str, str]]:
    """(stage name, key) of `variant`'s timed or untimed metric stages still to compute."""
    refs = eval_plan.stages.get(variant, {})
    return [
        (name, ref.key)
        for name, ref in refs.items()
        if is_timed(name) == timed and not store.is_done(ref)
    ]


def evaluate_variant(
    eval_plan: EvalPlan,
    variant: VariantPlan,
    output: OutputFolder,
    logs: Path,
    on_progress: Callable[[str, int | None, int | None], None],
    launch: Launch = run_python_worker,
    resources: Resources | None = None,
    timed: bool = False,
    threads: int | None = None,
    cpus: Sequence[int] | None = None,
    cores_file: Path | None = None,
) -> dict[str, str]:
    """Compute `variant`'s pending untimed metric stages (or, `timed`, its timed ones, in a
    worker that the scheduler runs alone) in one worker; the reason of each that failed.
    The worker computes on `threads` torch threads on the cores `cpus`; `cores_file`: where
    the scheduler may widen those cores while it runs."""
    store = output.stages()
    refs = eval_plan.stages.get(variant.name, {})
    pending = pending_stages(eval_plan, variant.name, store, timed)
    errors: dict[str, str] = {}
    if pending:
        logs.mkdir(parents=True, exist_ok=True)
        baseline_refs = eval_plan.stages.get(eval_plan.baseline or "", {})
        request = EvaluateRequest(
            artifact=variant.quantize,
            variant=variant.name,
            is_baseline=variant.name == eval_plan.baseline,
            config=eval_plan.config,
            output=output.location,
            pending=pending,
            own_keys={name: ref.key for name, ref in refs.items()},
            baseline_keys={name: ref.key for name, ref in baseline_refs.items()},
            corpus_key=eval_plan.corpus.key if eval_plan.corpus else None,
            divergence=DivergenceChoice(
                method=eval_plan.divergence.method, detail=eval_plan.divergence.detail
            ),
            baseline_artifact=eval_plan.baseline_artifact,
            threads=threads,
            cpus=None if cpus is None else list(cpus),
            alone=timed,
            cores_file=None if cores_file is None else str(cores_file),
        )
        finished: list[dict[str, str]] = []

        def on_event(event: dict[str, Any]) -> None:
            if event.get("phase") == FINISHED:
                finished.append(dict(event.get("errors") or {}))
                return
            on_progress(str(event.get("phase", "")), event.get("done"), event.get("total"))

        prefix = "time" if timed else "eval"
        log_path = logs / f"{prefix}-{variant.name}.log"
        returncode = launch(
            "quantbench.evaluate",
            request_json(request),
            logs / f"{prefix}-{variant.name}.request.json",
            log_path,
            on_event,
            resources=resources,
        )
        if returncode != 0 or not finished:
            reason = str(failure("evaluation", returncode, log_path))
            errors = {name: reason for name, _ in pending}
        else:
            errors = finished[-1]
    return errors


def collect_metrics(
    refs: dict[str, StageRef], store: StageStore, errors: dict[str, str]
) -> VariantMetrics:
    """Assemble the reported records from finished stage manifests."""

    records: dict[str, Any] = {}
    for name, ref in refs.items():
        metric, param = split_stage_name(name)
        if metric not in REGISTRY or not load_metric(metric).reported:
            continue
        if store.is_done(ref):
            record = stage_record(store.manifest(ref), MetricStage).record
            if metric not in VariantMetrics.model_fields:  # a plugin's metric
                records.setdefault("plugins", {})[name] = record
            elif param is None:
                records[name] = record
            else:
                records.setdefault(metric, {})[param] = record
        elif name not in errors:
            errors[name] = "not computed (an input stage failed)"
    reported = {k: v for k, v in errors.items() if k in refs}
    return VariantMetrics.model_validate({**records, "errors": reported})


def _worker_main(request_path: Path) -> None:
    die_with_parent()
    request = read_request(request_path, EvaluateRequest)
    limit_threads(request.threads)
    run_on_cpus(request.cpus)
    grant = CoreGrant(request.cores_file, request.cpus)

    config = request.config
    store = OutputFolder.open(request.output).stages()
    # Only metrics that load the model read the artifact: the others (perplexity and
    # divergence read the scores) spare its download from a URL.
    loads_model = any(
        load_metric(split_stage_name(name)[0]).needs_model for name, _ in request.pending
    )
    artifact = store.path(request.artifact, fetch=loads_model) / ARTIFACT_DIR
    is_baseline = request.is_baseline
    corpus_key = request.corpus_key
    windows = read_windows(store.path(StageRef("corpus", corpus_key))) if corpus_key else None
    loaded: dict[str, Any] = {}
    built_task_manager: list[Any] = []

    def task_manager(build: Callable[[], Any]) -> Any:
        """lm-eval's task index, built once per worker (≈ 9 s when it indexes every task)."""
        if not built_task_manager:
            built_task_manager.append(build())
        return built_task_manager[0]

    def backend_factory(name: str) -> tuple[Backend, LoadInfo]:
        """The artifact loaded in backend `name`; one backend at a time (a GPU holds one
        copy of the model), so switching closes the other."""
        if loaded.get("name") != name or not getattr(loaded.get("backend"), "alive", True):
            import psutil

            if "backend" in loaded:
                loaded.pop("backend").close()
            loaded.clear()
            emit("loading" if name == config.backend else f"loading ({name})")
            options: dict[str, Any] = {"device": config.device, "threads": config.threads}
            if name == "vllm":
                options["settings"] = config.vllm
            else:
                options["dtype"] = config.dtype
            backend = get_backend(name, **options)
            loaded["name"] = name
            try:
                loaded["info"] = backend.load(artifact)
            except BaseException:
                backend.close()
                loaded.clear()
                raise
            loaded["backend"] = backend
            if name == config.backend:
                rss = psutil.Process().memory_info().rss
                loaded["info"] = dataclasses.replace(loaded["info"], rss_after_load_bytes=rss)
        return loaded["backend"], loaded["info"]

    divergence = request.divergence
    baseline_artifact_ref = request.baseline_artifact

    def baseline_loader() -> Backend:
        """The baseline's artifact in the scores backend, loaded next to the variant."""
        assert baseline_artifact_ref is not None
        path = store.path(baseline_artifact_ref) / ARTIFACT_DIR
        name = config.backend_for("scores")
        emit(f"loading baseline ({name})")
        backend = get_backend(
            name, device=config.device, threads=config.threads, dtype=config.dtype
        )
        try:
            backend.load(path)
        except BaseException:
            backend.close()
            raise
        return backend

    def own_path(name: str) -> Path:
        return store.path(StageRef(name, request.own_keys[name]))

    errors: dict[str, str] = {}
    pending = sorted(  # metrics on another backend (speed on vllm) last: one switch at most
        request.pending,
        key=lambda item: config.backend_for(split_stage_name(item[0])[0]) != config.backend,
    )
    for name, key in pending:
        if store.is_done(StageRef(name, key)):  # finished by an earlier, killed attempt
            continue
        metric_name, param = split_stage_name(name)
        metric = load_metric(metric_name)
        missing = [
            n for n in metric.own_inputs if not store.is_done(StageRef(n, request.own_keys[n]))
        ]
        own = {n: own_path(n) for n in metric.own_inputs}
        reads = {n: input_stage(n, metric_name, param) for n in metric.baseline_inputs}
        if is_baseline:
            baseline = {n: own_path(stage) for n, stage in reads.items() if stage != name}
        else:
            baseline_keys = request.baseline_keys
            done = {
                n: StageRef(stage, baseline_keys[stage])
                for n, stage in reads.items()
                if stage in baseline_keys
            }
            missing += [n for n, ref in done.items() if not store.is_done(ref)]
            missing += [n for n, stage in reads.items() if stage not in baseline_keys]
            baseline = {n: store.path(ref) for n, ref in done.items() if n not in missing}
        if missing:
            errors[name] = f"needs {', '.join(sorted(set(missing)))}, which did not finish"
            continue
        ref = StageRef(name, key)
        emit(name)

        def progress(phase: str, done: int, total: int) -> None:
            grant.poll()
            emit(phase, done=done, total=total)

        with store.build(ref) as work:
            context = EvalContext(
                variant=request.variant,
                is_baseline=is_baseline,
                artifact=artifact,
                config=config,
                work=work,
                own=own,
                baseline=baseline,
                windows=windows,
                progress=progress,
                backend_factory=backend_factory,
                backend_name=config.backend_for(metric_name),
                param=param,
                corpus_key=corpus_key or "",
                task_manager=task_manager,
                divergence_method=divergence.method,
                divergence_detail=divergence.detail,
                baseline_loader=(
                    baseline_loader
                    if baseline_artifact_ref is not None and not is_baseline
                    else None
                ),
                alone=request.alone,
                resume=store.partial(ref) if getattr(metric, "resumable", False) else None,
            )
            started = time.perf_counter()
            grant.poll()
            cores_at_start = grant.cores
            try:
                with AnonymousPeak() as anonymous:
                    record = metric.compute(context)
            except Exception as exc:  # one metric failing must not lose the others
                traceback.print_exc()
                errors[name] = f"{type(exc).__name__}: {exc}"
                continue
            cores_at_end = grant.cores
            stage = MetricStage(
                metric=name,
                variant=request.variant,
                record=record.model_dump(mode="json"),
                wall_s=time.perf_counter() - started,
                peak_rss_bytes=peak_rss_bytes(),
                peak_anonymous_bytes=anonymous.peak_bytes,
                engine_peak_bytes=getattr(loaded.get("backend"), "engine_peak_bytes", None),
                threads=torch_threads(),
                cores=cores_at_start,
                cores_raised_to=cores_at_end if cores_at_end != cores_at_start else None,
                ran_alone=request.alone,
            )
            store.commit(ref, work, stage.model_dump(mode="json"))
    if "backend" in loaded:
        loaded["backend"].close()
        loaded.clear()
    emit(FINISHED, errors=errors)


if __name__ == "__main__":
    _worker_main(Path(sys.argv[1]))
