"""Run a study: resolve the model, plan, pre-flight, calibrate, quantize, write results.

This is the spine of the pipeline picture in the README; every stage is looked up by its
content key first, so a finished study re-runs without model work.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import functools
import os
import shutil
import threading
import uuid
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from quantbench import __version__, provenance
from quantbench.backends.vllm import VLLMBackend
from quantbench.backends.vllm_support import (
    hardware_here,
    support_for_mixed,
    support_for_scheme,
)
from quantbench.calibration import prepare_calibration
from quantbench.compare import merge_model_studies
from quantbench.config import SchemeEntry, StudyConfig, model_labels
from quantbench.corpus import prepare_corpus
from quantbench.errors import StageFailed, UserError
from quantbench.evaluate import (
    EvalPlan,
    collect_metrics,
    evaluate_variant,
    evaluation_stage_bytes,
    pending_stages,
)
from quantbench.executors import Executor, get_executor
from quantbench.hardware import gpus_visible
from quantbench.metrics import split_stage_name
from quantbench.models import inspect_model, resolve_model
from quantbench.output import LOGS_DIR, STAGES_DIR, OutputFolder
from quantbench.plan import StudyPlan, VariantPlan
from quantbench.preflight import (
    EvaluationMemory,
    available_memory_bytes,
    check_calibration_sources,
    preflight_variants,
    vllm_problem,
)
from quantbench.process.child import grant_cores
from quantbench.process.requests import QuantizedStage, QuantizePlan, QuantizeRequest, stage_record
from quantbench.quantize import ARTIFACT_DIR, calibration_dtype_here, run_worker
from quantbench.quantize import Progress as WorkerProgress
from quantbench.recommend import recommend
from quantbench.report.files import write_sensitivity
from quantbench.results import (
    CalibrationRecord,
    Constraints,
    SensitivityRecord,
    StudyResults,
    VariantResult,
)
from quantbench.schedule import Job, Placement, run_jobs
from quantbench.schemes import Preflight, get_scheme
from quantbench.schemes.mixed import MixedPrecision
from quantbench.sensitivity import (
    read_sensitivity,
    run_sensitivity_worker,
    screen_request,
    search_allocation,
)
from quantbench.stages import StudyStages, plan_study
from quantbench.store import (
    StageRef,
    StageStore,
    ensure_writable_dir,
    exclusive,
    sweep_temporary_files,
)
from quantbench.study_files import RESULTS_FILE, DamagedResults, load_results

LOCK_FILE = ".quantbench.lock"
ARTIFACTS_DIR = "artifacts"
"""`<out>/artifacts/<variant>/`: each artifact under a stable name (a relative link to its
stage folder), whatever its stage key."""


def run_study(config: StudyConfig, console: Console) -> StudyResults:
    """Run (or resume) the study described by `config`; returns the saved results.

    The lock is on the local folder (a URL's mirror): it keeps two runs on one machine
    apart. Runs on different machines writing one URL do not corrupt each other (see
    `remote.py`), but may compute a stage twice."""
    output = OutputFolder.open(config.out)
    ensure_writable_dir(output.local)
    with exclusive(output.local / LOCK_FILE, what=str(output)):
        if len(config.models()) > 1:
            return _run_models(config, output, console)
        return _run(config, output, console)


def _run_models(config: StudyConfig, output: OutputFolder, console: Console) -> StudyResults:
    """A study of several models: one study per model in `<out>/<label>/` (its own baseline,
    calibration and corpus, since tokens differ), one after the other, then one merged
    results.json and report in `<out>/` with `model` as a study axis."""

    labels = model_labels(config.models())
    studies = []
    for label, spec in zip(labels, config.models(), strict=True):
        console.rule(f"[bold]model {label}[/] ({spec})")
        sub = OutputFolder.open(output.child(label))
        ensure_writable_dir(sub.local)
        with exclusive(sub.local / LOCK_FILE, what=str(sub)):
            studies.append(_run(config.for_model(spec, sub.location), sub, console))
    merged = merge_model_studies(labels, studies, config.model_dump(mode="json"))
    constraints = Constraints(**config.decision.model_dump())
    merged = merged.model_copy(update={"recommendation": recommend(merged, constraints)})
    output.save(merged, model_cards=False)
    return merged


def _evaluation_pending(eval_plan: EvalPlan, store: StageStore) -> bool:
    """Whether any metric stage is still to run: a finished study's rerun then starts no
    fork server (its preload imports torch, transformers and llm-compressor)."""
    return any(
        not store.is_done(ref) for stages in eval_plan.stages.values() for ref in stages.values()
    )


def _executor(config: StudyConfig) -> Executor:
    execution = config.execution
    options = {"address": execution.ray_address} if execution.executor == "ray" else {}
    return get_executor(execution.executor, **options)


def _run(config: StudyConfig, output: OutputFolder, console: Console) -> StudyResults:
    """Planning first; then pre-flight and the inputs (calibration data, corpus) while the
    executor gets its workers ready (a refusal stops it before any worker runs); then
    quantize and evaluate through it."""
    store = output.stages()
    swept = store.sweep_stale()
    if swept:
        console.print(f"[dim]removed {len(swept)} unfinished stage folder(s) of a killed run")
    sweep_temporary_files(output.local, (ARTIFACTS_DIR,))
    _note_damaged_results(output, console)
    (spec,) = config.models()
    model = resolve_model(
        spec,
        on_status=lambda s: console.print(f"[dim]{s}"),
        allow_pickle=config.allow_pickle,
        tokenizer=config.tokenizer,
    )
    for note in model.notes:
        console.print(f"[dim]model: {note}")
    study = plan_study(config, model, lambda note: console.print(f"[dim]{note}"))
    config, plan, eval_plan = study.config, study.plan, study.evaluation
    damaged = discard_damaged(
        store, study.refs(), output, lambda line: console.print(line, soft_wrap=True)
    )
    pending = [v for v in plan.variants if not store.is_done(v.quantize)]
    check_calibration_sources(pending, plan.config.calibration.default)
    runner = _executor(config)
    try:
        if pending or (eval_plan and _evaluation_pending(eval_plan, store)):
            # The workers' imports, on another core, beside pre-flight's model inspection;
            # every input a user can get wrong was checked above or in planning.
            runner.prestart()
        preflights = _preflight(plan, pending, console, eval_plan.memory if eval_plan else None)
        if eval_plan is not None:
            _runtime_preflight(plan, eval_plan, console)
        calibrations = _calibration(plan, pending, damaged, store, console)
        if eval_plan and eval_plan.corpus and not store.is_done(eval_plan.corpus):
            with console.status("tokenizing the evaluation corpus"):
                prepare_corpus(store, eval_plan.corpus, config.evaluation.corpus, model)
        variants, schedule = _run_jobs(study, preflights, output, console, runner)
        results = StudyResults(
            quantbench_version=__version__,
            created_at=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            model={**model.describe(), **base_model_facts(model.kind, model.path)},
            config=config.model_dump(mode="json"),
            calibration=calibrations[0] if calibrations else None,
            calibrations=calibrations,
            variants=variants,
            sensitivity=study_sensitivity(plan, store),
        )
        results = _finalize(results, config, store, eval_plan)
        results.provenance["executor"] = runner.describe()
        results.provenance["schedule"] = schedule
        output.save(results, logs=True)
    finally:
        runner.close()
    return results


SCREEN_ONLY_BUDGET = 1.0
"""`quantbench sensitivity` plans a mixed variant only to find its screen; the screen's key
leaves the budget out, so any budget finds the same stage."""


def run_sensitivity(
    config: StudyConfig, screen: dict[str, Any], console: Console
) -> SensitivityRecord:
    """Screen the study's model (or read the screen the output folder holds) for the
    candidates and settings in `screen` (options of the `mixed` scheme), preparing the
    calibration samples it is drawn from and the evaluation corpus it must be disjoint
    from; writes sensitivity.json and sensitivity.svg into the output folder."""
    entry = SchemeEntry(scheme="mixed", scheme_options={**screen, "max_kl": SCREEN_ONLY_BUDGET})
    config = config.model_copy(update={"schemes": (entry,), "mixed": ()})
    if len(config.models()) > 1:
        raise UserError("quantbench sensitivity screens one model at a time")
    output = OutputFolder.open(config.out)
    ensure_writable_dir(output.local)
    with exclusive(output.local / LOCK_FILE, what=str(output)):
        store = output.stages()
        (spec,) = config.models()
        model = resolve_model(
            spec,
            on_status=lambda s: console.print(f"[dim]{s}"),
            allow_pickle=config.allow_pickle,
            tokenizer=config.tokenizer,
        )
        study = plan_study(config, model, lambda _: None)
        (variant,) = [v for v in study.plan.variants if v.sensitivity is not None]
        assert variant.sensitivity is not None
        discard_damaged(store, [variant.sensitivity], output, console.print)
        preflights = _preflight(study.plan, [variant], console)
        if not store.is_done(variant.sensitivity):
            _calibration(study.plan, [variant], [], store, console)
            corpus = study.evaluation.corpus if study.evaluation else None
            if corpus is not None and not store.is_done(corpus):
                with console.status("tokenizing the evaluation corpus"):
                    assert study.evaluation is not None
                    prepare_corpus(store, corpus, study.config.evaluation.corpus, model)
            runner = _executor(config)
            try:
                with _progress(console) as progress:
                    task = progress.add_task(
                        "sensitivity", total=None, phase="starting", threads=""
                    )
                    record = _sensitivity(
                        study, variant, preflights[variant.name], output, progress, task, runner
                    )
            finally:
                runner.close()
        else:
            record = read_sensitivity(store.path(variant.sensitivity))
        written = write_sensitivity(record, output.local)
        output.publish([path.name for path in written])
    return record


def study_sensitivity(plan: StudyPlan, store: StageStore) -> SensitivityRecord | None:
    """The study's sensitivity table, when one of its variants has been searched from one
    (the first, should variants ask for different screens)."""
    for variant in plan.variants:
        if variant.sensitivity is not None and store.is_done(variant.sensitivity):
            return read_sensitivity(store.path(variant.sensitivity))
    return None


def discard_damaged(
    store: StageStore, refs: list[StageRef], output: OutputFolder, say: Callable[[str], None]
) -> list[StageRef]:
    """Check every done stage in `refs` against its manifest (`StageStore.verify`); a
    damaged one is removed, with one line saying which file, so this run recomputes just
    that stage. The stages removed."""
    damaged = []
    for ref in refs:
        damage = store.verify(ref)
        if damage is None:
            continue
        store.discard(ref)
        say(
            f"[yellow]damaged:[/] {output.child(damage.file)} {damage.problem}: recomputing "
            "that stage"
        )
        damaged.append(ref)
    return damaged


def _note_damaged_results(output: OutputFolder, console: Console) -> None:
    """Say so when the results.json this run replaces cannot be read (cut short, edited):
    the run rebuilds it from the stages, so nothing else has to be done."""

    if output.remote is None and (output.local / RESULTS_FILE).is_file():
        try:
            load_results(output.local)
        except DamagedResults as exc:
            console.print(
                f"[yellow]damaged:[/] {exc.path} ({exc.problem}): rebuilt from the finished "
                "stages at the end of this run",
                soft_wrap=True,
            )
        except UserError:
            pass  # another schema version: replaced by this run's, as always


def base_model_facts(kind: str, path: Path) -> dict[str, str]:
    """What a model card says of the base model beyond the study's spec: its hub id, read
    from a hub cache folder (`models--org--name/snapshots/...`), and its license, from the
    front matter of the folder's README.md. Empty when neither is known."""
    facts: dict[str, str] = {}
    for part in path.parts:
        if part.startswith("models--") and part.count("--") >= 2:
            facts["hub_id"] = part.removeprefix("models--").replace("--", "/", 1)
    readme = path / "README.md"
    if kind in ("local", "hub") and readme.is_file():
        import yaml

        try:
            text = readme.read_text(errors="replace")
            front = yaml.safe_load(text.split("---", 2)[1]) if text.startswith("---") else None
        except (OSError, IndexError, yaml.YAMLError):
            front = None
        license_ = front.get("license") if isinstance(front, dict) else None
        if isinstance(license_, str):
            facts["license"] = license_
    return facts


def _finalize(
    results: StudyResults, config: StudyConfig, store: StageStore, eval_plan: EvalPlan | None
) -> StudyResults:
    """Add the provenance block and the recommendation under the configured constraints."""

    inputs: dict[str, Any] = {}
    if results.calibration:
        inputs["calibration"] = results.calibration.model_dump()
    if len(results.calibrations) > 1:
        inputs["calibrations"] = [c.model_dump() for c in results.calibrations]
    if eval_plan and eval_plan.corpus and store.is_done(eval_plan.corpus):
        manifest = store.manifest(eval_plan.corpus)
        inputs["corpus"] = {
            key: manifest[key]
            for key in (
                "source",
                "source_identity",
                "tokens_sha256",
                "n_targets",
                "window",
                "stride",
            )
        }
    prompts = {
        (g.suite, g.suite_sha256)
        for v in results.variants
        if (g := v.metrics.generations) is not None
    }
    if prompts:
        inputs["prompts"] = [{"suite": suite, "sha256": digest} for suite, digest in prompts]
    seeds = {
        "calibration": config.calibration.model_dump()["seed"],
        "bootstrap": config.evaluation.seed,
    }
    block = provenance.collect(config.model_dump(mode="json"), results.model, inputs, seeds)
    recommendation = recommend(results, Constraints(**config.decision.model_dump()))
    return results.model_copy(update={"provenance": block, "recommendation": recommendation})


def _run_jobs(
    study: StudyStages,
    preflights: dict[str, Preflight],
    output: OutputFolder,
    console: Console,
    runner: Executor,
) -> tuple[list[VariantResult], dict[str, Any]]:
    """Quantize every variant and evaluate every one that quantized, as a graph of jobs that
    `quantbench.schedule` runs side by side where the cores and memory allow: a variant's
    evaluation after its quantization (and after the baseline's, when it reads the
    baseline's stages), its timed metrics in a job of their own that runs alone. Stages the
    store holds already are not jobs. The variants' results, and the schedule as it ran."""
    plan, eval_plan = study.plan, study.evaluation
    store = output.stages()
    execution = study.config.execution
    capacity = runner.capacity(
        available_memory_bytes(execution.memory_limit_gib), execution.max_parallel
    )
    results: dict[str, VariantResult] = {}
    errors: dict[str, dict[str, str]] = {v.name: {} for v in plan.variants}
    jobs: list[Job] = []
    with _progress(console) as progress:
        rows: dict[str, TaskID] = {}

        def row(name: str) -> TaskID:
            rows[name] = progress.add_task(
                name, start=False, total=None, phase="waiting", threads=""
            )
            return rows[name]

        for variant in _longest_first(plan.variants):
            if store.is_done(variant.quantize):
                results[variant.name] = _variant_result(variant, output)
                progress.update(
                    row(f"quantize {variant.name}"), total=1, completed=1, phase="cached"
                )
                continue
            preflight = preflights[variant.name]
            jobs.append(
                Job(
                    f"quantize {variant.name}",
                    _quantize_job(
                        study, variant, output, preflight, progress, row, results, runner
                    ),
                    memory_bytes=preflight.memory_bytes,
                    gpu=gpus_visible(),
                )
            )
        if eval_plan is not None:
            jobs += _evaluation_jobs(
                study, eval_plan, output, progress, row, errors, runner, capacity.cores
            )

        # A need the store holds already (a quantization or baseline evaluation finished by an
        # earlier run) is not a job: nothing to wait for.
        names = {job.name for job in jobs}
        jobs = [
            dataclasses.replace(job, needs=tuple(n for n in job.needs if n in names))
            for job in jobs
        ]

        def on_start(job: Job, placement: Placement) -> None:
            count = placement.describe()
            progress.start_task(rows[job.name])
            progress.update(
                rows[job.name],
                phase="starting",
                threads=f"{count}, alone" if job.alone else count,
            )

        def on_skip(job: Job) -> None:
            progress.update(rows[job.name], phase="[dim]skipped: its quantization failed")

        def on_raise(job: Job, placement: Placement) -> None:
            progress.update(rows[job.name], threads=f"{placement.describe()} (cores lent)")

        runs = run_jobs(jobs, capacity, on_start, on_skip, on_raise)
    variants = []
    for variant in plan.variants:
        result = results[variant.name]
        if eval_plan is not None and result.status == "ok":
            metrics = collect_metrics(
                eval_plan.stages.get(variant.name, {}), store, errors[variant.name]
            )
            result = result.model_copy(update={"metrics": metrics})
        variants.append(result)
    schedule = {
        "cores": capacity.cores,
        "max_parallel": capacity.max_parallel,
        "memory_bytes": capacity.memory_bytes,
        "jobs": [run.record() for run in runs],
    }
    return variants, schedule


def _longest_first(variants: tuple[VariantPlan, ...]) -> list[VariantPlan]:
    """Quantizations that calibrate first (GPTQ, SmoothQuant: minutes, against seconds to
    save a baseline or quantize without data), so the longest jobs start at once and the
    short ones and the evaluations fill the cores around them instead of trailing alone."""
    return sorted(variants, key=lambda variant: not variant.needs_calibration)


def _quantize_job(
    study: StudyStages,
    variant: VariantPlan,
    output: OutputFolder,
    preflight: Preflight,
    progress: Progress,
    row: Callable[[str], TaskID],
    results: dict[str, VariantResult],
    runner: Executor,
) -> Callable[[Placement], bool]:
    task = row(f"quantize {variant.name}")

    def run(placement: Placement) -> bool:
        result = _quantize_variant(
            study, variant, output, preflight, progress, task, runner, placement
        )
        results[variant.name] = result
        return result.status == "ok"

    return run


def _evaluation_jobs(
    study: StudyStages,
    eval_plan: EvalPlan,
    output: OutputFolder,
    progress: Progress,
    row: Callable[[str], TaskID],
    errors: dict[str, dict[str, str]],
    runner: Executor,
    cores: int | None,
) -> list[Job]:
    """Per variant, a job for its pending untimed metric stages and one, run alone, for its
    timed ones (speed, and size, whose load time is a time)."""
    store = output.stages()
    config = eval_plan.config
    logs = output.local / LOGS_DIR
    readers = {s.variant for s in study.stages if s.reads_baseline}
    jobs: list[Job] = []
    for variant in eval_plan.order(study.plan.variants):
        needs = (f"quantize {variant.name}",)
        for timed in (False, True):
            pending = pending_stages(eval_plan, variant.name, store, timed)
            if not pending:
                continue
            name = f"{'time' if timed else 'evaluate'} {variant.name}"
            task = row(name)
            on_vllm = any(
                config.backend_for(split_stage_name(stage)[0]) == "vllm" for stage, _ in pending
            )
            threads = config.threads or (cores if on_vllm and not timed else None)
            job_needs: tuple[str, ...] = needs
            if not timed and variant.name in readers and eval_plan.baseline:
                job_needs = (*needs, f"evaluate {eval_plan.baseline}")
            # An untimed evaluation on this machine's cores may be lent cores that free up
            # while it runs (its threads stay); a timed one runs alone, and a fixed count
            # keeps its cores.
            grant = logs / f"eval-{variant.name}.cores" if cores and not timed else None
            jobs.append(
                Job(
                    name,
                    _evaluation_job(
                        study,
                        eval_plan,
                        variant,
                        output,
                        logs,
                        progress,
                        task,
                        errors,
                        runner,
                        timed,
                        grant,
                    ),
                    needs=job_needs,
                    memory_bytes=evaluation_stage_bytes(study.plan, eval_plan, variant.name),
                    threads=threads,
                    alone=timed,
                    gpu=gpus_visible() and config.device != "cpu",
                    grow=None if grant is None else functools.partial(grant_cores, str(grant)),
                )
            )
    return jobs


def _evaluation_job(
    study: StudyStages,
    eval_plan: EvalPlan,
    variant: VariantPlan,
    output: OutputFolder,
    logs: Path,
    progress: Progress,
    task: TaskID,
    errors: dict[str, dict[str, str]],
    runner: Executor,
    timed: bool,
    grant: Path | None,
) -> Callable[[Placement], bool]:
    def on_progress(phase: str, done: int | None, total: int | None) -> None:
        if total:
            progress.update(task, total=total, completed=done or 0, phase=phase)
        else:
            progress.update(task, phase=phase)

    def run(placement: Placement) -> bool:
        if grant is not None:  # cores lent to an earlier, killed run of this job
            logs.mkdir(parents=True, exist_ok=True)
            grant.unlink(missing_ok=True)
        failed = evaluate_variant(
            eval_plan,
            variant,
            output,
            logs,
            on_progress,
            runner.launch,
            study.worker_resources("evaluate", variant=variant.name),
            timed=timed,
            threads=placement.threads,
            cpus=placement.cpus,
            cores_file=grant,
        )
        if grant is not None:
            grant.unlink(missing_ok=True)
        errors[variant.name].update(failed)
        reasons = ", ".join(failed)
        progress.update(
            task, total=1, completed=1, phase=f"[red]failed: {reasons}" if reasons else "done"
        )
        return True  # a failed stage is recorded; stages that read it say what they miss

    return run


def _preflight(
    plan: StudyPlan,
    pending: list[VariantPlan],
    console: Console,
    evaluation: EvaluationMemory | None = None,
) -> dict[str, Preflight]:
    if not pending:
        return {}
    info = inspect_model(plan.model.path)
    outcomes = preflight_variants(
        pending,
        info,
        plan.config.calibration.default,
        available_memory_bytes(plan.config.execution.memory_limit_gib),
        calibration_dtype_here(plan.config.calibration.compute_dtype),
        evaluation,
    )
    problems = [p for outcome in outcomes.values() for p in outcome.problems]
    for name, outcome in outcomes.items():
        for decision in outcome.decisions:
            console.print(f"[yellow]pre-flight[/] {name}: {decision}")
    if problems:
        raise UserError("pre-flight found problems: " + "; ".join(problems))
    return outcomes


def _runtime_preflight(plan: StudyPlan, eval_plan: EvalPlan, console: Console) -> None:
    """For metrics on the vllm backend: check its environment and say, per variant, whether
    vLLM runs it natively on this hardware, through a fallback kernel, or not at all (those
    figures are then recorded as unsupported, without starting an engine)."""
    config = eval_plan.config
    uses = sorted({m for m in config.metric_names() if config.backend_for(m) == "vllm"})
    if not uses:
        return

    python = VLLMBackend(settings=config.vllm)._python()  # a user error when there is none
    hardware = hardware_here(config.device)
    if hardware.device == "cpu":
        problem = vllm_problem(
            inspect_model(plan.model.path),
            list(plan.variants),
            config.vllm.kv_cache_gib,
            available_memory_bytes(plan.config.execution.memory_limit_gib),
        )
        if problem is not None:
            raise UserError(f"pre-flight found problems: {problem}")
    console.print(
        f"[yellow]pre-flight[/] vllm ({', '.join(uses)}) on {hardware.describe()}, "
        f"interpreter {python}:"
    )
    for variant in plan.variants:
        support = support_for_scheme(variant.scheme.name, hardware)
        if isinstance(variant.scheme, MixedPrecision):  # its candidates, as they may be mixed
            families = [
                get_scheme(name).runtime_family
                for name in variant.options["candidates"]
                if get_scheme(name).quantizes
            ]
            granularity = str(variant.options["granularity"])
            support = support_for_mixed(granularity, families, hardware)
        colour = {"native": "green", "fallback": "yellow", "unsupported": "red"}[support.kind]
        console.print(f"  {variant.name}: [{colour}]{support.describe()}[/]")


def _calibration(
    plan: StudyPlan,
    pending: list[VariantPlan],
    damaged: list[StageRef],
    store: StageStore,
    console: Console,
) -> list[CalibrationRecord]:
    """Prepare every calibration stage a pending variant needs, and every damaged one the
    study's records come from; records of all that exist."""
    needed = {v.calibration.key for v in pending if v.calibration is not None}
    needed |= {ref.key for ref in damaged if ref.stage == "calibration"}
    records = []
    for key, (ref, settings) in plan.calibrations.items():
        if not store.is_done(ref):
            if key not in needed:
                continue
            label = f" ({settings.num_samples} × {settings.seq_len})" if len(needed) > 1 else ""
            with console.status(f"preparing calibration samples{label}"):
                prepare_calibration(store, ref, settings, plan.model)
        manifest = store.manifest(ref)
        if manifest["num_samples"] < manifest["num_samples_requested"]:
            console.print(
                f"[yellow]calibration: only {manifest['num_samples']} of "
                f"{manifest['num_samples_requested']} requested samples were available"
            )
        records.append(
            CalibrationRecord(
                key=ref.key,
                source=manifest["source"],
                num_samples=manifest["num_samples"],
                seq_len=manifest["seq_len"],
                seed=manifest["seed"],
                total_tokens=manifest["total_tokens"],
                samples_sha256=manifest["samples_sha256"],
            )
        )
    return records


def _progress(console: Console) -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description:<18}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[phase]}"),
        TextColumn("[dim]{task.fields[threads]}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )


def _quantize_variant(
    study: StudyStages,
    variant: VariantPlan,
    output: OutputFolder,
    preflight: Preflight | None,
    progress: Progress,
    task: TaskID,
    runner: Executor,
    placement: Placement | None = None,
) -> VariantResult:
    """Quantize `variant` in a worker with the placement's threads on its cores (None:
    torch's default threads, on any core)."""
    placement = placement or Placement()
    plan = study.plan
    store = output.stages()
    if store.is_done(variant.quantize):
        progress.update(task, total=1, completed=1, phase="cached")
        return _variant_result(variant, output)
    assert preflight is not None, "pending variants always have a pre-flight outcome"
    progress.update(task, phase="starting")
    calibration = variant.calibration
    worker_options = preflight.resolved_options
    mixed = None
    if variant.sensitivity is not None:
        try:
            record = _sensitivity(
                study, variant, preflight, output, progress, task, runner, placement
            )
            mixed, layers = search_allocation(record, preflight.resolved_options)
        except (StageFailed, UserError) as exc:
            progress.update(task, phase="[red]failed")
            return _failed(plan, variant, preflight, exc)
        scheme = variant.scheme
        assert isinstance(scheme, MixedPrecision)
        own = scheme.candidate_options(inspect_model(plan.model.path), worker_options)
        worker_options = {
            **worker_options,
            "allocation": layers,
            "candidate_options": own.resolved_options,
        }
        hardware = hardware_here(study.config.evaluation.device)
        families = [
            get_scheme(name).runtime_family
            for name, names in layers.items()
            if names and get_scheme(name).quantizes
        ]
        support = support_for_mixed(str(worker_options["granularity"]), families, hardware)
        preflight = replace(
            preflight,
            notes=[*preflight.notes, f"vLLM on {hardware.describe()}: {support.describe()}"],
        )
        progress.update(task, phase="starting")
    request = QuantizeRequest(
        variant=variant.name,
        output=output.location,
        stage=variant.quantize,
        model=plan.model.describe(),
        scheme=variant.scheme.name,
        options=worker_options,
        seq_len=(variant.calibration_config or plan.config.calibration.default).seq_len,
        calibration=calibration,
        compute_dtype=plan.config.calibration.compute_dtype,
        manifest=QuantizePlan(
            scheme=variant.scheme.name,
            options_requested=variant.requested,
            options=preflight.resolved_options,
            decisions=preflight.decisions,
            notes=preflight.notes,
            needs_calibration=variant.needs_calibration,
            calibration_key=calibration.key if calibration else None,
            model_fingerprint=plan.model.fingerprint,
            mixed=mixed,
        ),
        threads=placement.threads,
        cpus=None if placement.cpus is None else list(placement.cpus),
    )

    def on_progress(update: WorkerProgress) -> None:
        if update.total is not None:
            progress.update(task, total=update.total, completed=update.done, phase=update.phase)
        else:
            progress.update(task, phase=update.phase)

    resources = study.worker_resources("quantize", memory_bytes=preflight.memory_bytes)
    try:
        run_worker(request, output.local / LOGS_DIR, on_progress, runner.launch, resources)
    except StageFailed as exc:
        progress.update(task, phase="[red]failed")
        return _failed(plan, variant, preflight, exc)
    progress.update(task, total=1, completed=1, phase="done")
    return _variant_result(variant, output)


def _failed(
    plan: StudyPlan, variant: VariantPlan, preflight: Preflight, exc: StageFailed | UserError
) -> VariantResult:
    return VariantResult(
        name=variant.name,
        scheme=variant.scheme.name,
        status="failed",
        error=str(exc),
        log_path=exc.log_path if isinstance(exc, StageFailed) else None,
        options_requested=variant.requested,
        options=preflight.resolved_options,
        decisions=preflight.decisions,
        notes=preflight.notes,
        needs_calibration=variant.needs_calibration,
        axes=variant.axes,
        stage_keys=_stage_keys(plan, variant),
    )


_SENSITIVITY_LOCK = threading.Lock()


def _sensitivity(
    study: StudyStages,
    variant: VariantPlan,
    preflight: Preflight,
    output: OutputFolder,
    progress: Progress,
    task: TaskID,
    runner: Executor,
    placement: Placement | None = None,
) -> SensitivityRecord:
    """The sensitivity table a mixed variant is searched from: the stage's, or screened now
    in a worker (once, whichever mixed variant asks first)."""
    assert variant.sensitivity is not None
    placement = placement or Placement()
    store = output.stages()
    with _SENSITIVITY_LOCK:
        if not store.is_done(variant.sensitivity):
            progress.update(task, phase="sensitivity")
            request = screen_request(
                variant,
                preflight.resolved_options,
                inspect_model(study.plan.model.path),
                study.plan.model.describe(),
                store,
                output.location,
                study.evaluation.corpus if study.evaluation else None,
            ).model_copy(
                update={
                    "threads": placement.threads,
                    "cpus": None if placement.cpus is None else list(placement.cpus),
                }
            )

            def on_progress(done: int, total: int) -> None:
                progress.update(task, total=total, completed=done, phase="sensitivity")

            run_sensitivity_worker(
                request,
                output.local / LOGS_DIR,
                on_progress,
                runner.launch,
                study.worker_resources("quantize", memory_bytes=preflight.memory_bytes),
            )
        return read_sensitivity(store.path(variant.sensitivity))


def _stage_keys(plan: StudyPlan, variant: VariantPlan) -> dict[str, str]:
    keys = {"quantize": variant.quantize.key}
    if variant.calibration:
        keys["calibration"] = variant.calibration.key
    return keys


def artifact_location(output: OutputFolder, variant: str, ref: StageRef) -> str:
    """Where the variant's artifact is, under a stable name: `<out>/artifacts/<variant>`, a
    relative link to the stage folder (re-pointed when the stage key changed), so it moves
    with the study. A URL has no links: there it is a copy (see `_artifact_copy_at_url`)."""
    store = output.stages()
    if output.remote is not None:
        return _artifact_copy_at_url(output, variant, ref)
    target = store.path(ref) / ARTIFACT_DIR
    link = output.local / ARTIFACTS_DIR / variant
    relative = os.path.relpath(target, link.parent)
    if link.is_symlink() and os.readlink(link) == relative:
        return str(link)
    link.parent.mkdir(parents=True, exist_ok=True)
    temporary = link.with_name(f".tmp-{link.name}-{uuid.uuid4().hex[:8]}")
    try:
        os.symlink(relative, temporary, target_is_directory=True)
    except OSError:  # a filesystem without links: the stage folder itself
        return str(target)
    if link.is_dir() and not link.is_symlink():
        shutil.rmtree(link)  # a copy made following links: the stage is the original
    os.replace(temporary, link)
    return str(link)


ARTIFACT_SOURCE = ".quantbench-source"
"""In `<url>/artifacts/<variant>/`: the stage attempt it was copied from, written last."""


def _artifact_copy_at_url(output: OutputFolder, variant: str, ref: StageRef) -> str:
    """`<url>/artifacts/<variant>`: a copy of the stage's artifact, made inside the store
    (server-side on object stores) unless the copy there already came from this stage
    attempt; a copy from another attempt or key is removed first. Its marker object is
    written last, so a copy cut short is made again by the next run."""
    assert output.remote is not None
    attempt = output.stages().manifest(ref)["attempt"]
    source = f"{ref.stage}/{ref.key}/{attempt}"
    stable = output.remote.child(ARTIFACTS_DIR, variant)
    if stable.read_bytes(ARTIFACT_SOURCE) != source.encode():
        stable.remove_folder()
        output.remote.copy_folder(
            (STAGES_DIR, ref.stage, ref.key, attempt, ARTIFACT_DIR), (ARTIFACTS_DIR, variant)
        )
        stable.write_bytes(source.encode(), ARTIFACT_SOURCE)
    return stable.url


def _variant_result(variant: VariantPlan, output: OutputFolder) -> VariantResult:
    store = output.stages()
    stage = stage_record(store.manifest(variant.quantize), QuantizedStage)
    keys = {"quantize": variant.quantize.key}
    if stage.calibration_key:
        keys["calibration"] = stage.calibration_key
    if stage.mixed is not None:
        keys["sensitivity"] = stage.mixed.sensitivity_key
    return VariantResult(
        name=variant.name,
        scheme=stage.scheme,
        status="ok",
        artifact_path=artifact_location(output, variant.name, variant.quantize),
        options_requested=stage.options_requested,
        options=stage.options,
        decisions=stage.decisions,
        notes=[*stage.notes, *stage.quantization.notes],
        needs_calibration=stage.needs_calibration,
        axes=variant.axes,
        quantization=stage.quantization,
        disk_bytes=stage.disk_bytes,
        artifact_bytes=stage.artifact_bytes,
        stage_keys=keys,
        mixed=stage.mixed,
    )
