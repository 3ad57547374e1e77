"""Run a study: resolve the model, plan, pre-flight, calibrate, quantize, write results.

This is the spine of the pipeline picture in the README; every stage is looked up by its
content key first, so a finished study re-runs without model work.
"""

from __future__ import annotations

import datetime as _dt
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

from quantbench import __version__
from quantbench.calibration import SAMPLES_FILE, prepare_calibration
from quantbench.config import StudyConfig
from quantbench.errors import StageFailed, UserError
from quantbench.executors import get_executor
from quantbench.models import inspect_model, resolve_model
from quantbench.plan import StudyPlan, VariantPlan, build_plan
from quantbench.preflight import available_memory_bytes, preflight_variants
from quantbench.quantize import ARTIFACT_DIR, run_worker
from quantbench.quantize import Progress as WorkerProgress
from quantbench.results import (
    CalibrationRecord,
    QuantizationRecord,
    StudyResults,
    VariantResult,
    save_results,
)
from quantbench.schemes import Preflight
from quantbench.store import StageStore, dir_bytes, ensure_writable_dir, exclusive

LOCK_FILE = ".quantbench.lock"
STAGES_DIR = "stages"
WEIGHT_SUFFIXES = (".safetensors", ".bin")


def run_study(config: StudyConfig, console: Console, executor: str = "local") -> StudyResults:
    """Run (or resume) the study described by `config`; returns the saved results."""
    out = config.out
    ensure_writable_dir(out)
    runner = get_executor(executor)
    with exclusive(out / LOCK_FILE, what=str(out)):
        store = StageStore(out / STAGES_DIR)
        swept = store.sweep_stale()
        if swept:
            console.print(f"[dim]removed {len(swept)} unfinished stage folder(s) of a killed run")
        model = resolve_model(config.model, on_status=lambda s: console.print(f"[dim]{s}"))
        for note in model.notes:
            console.print(f"[dim]model: {note}")
        plan = build_plan(config, model)
        pending = [v for v in plan.variants if not store.is_done(v.quantize)]
        preflights = _preflight(plan, pending, console)
        calibration = _calibration(plan, pending, store, console)
        with _progress(console) as progress:
            tasks = {
                v.name: progress.add_task(v.name, total=None, phase="waiting")
                for v in plan.variants
            }

            def job(variant: VariantPlan) -> VariantResult:
                return _quantize_variant(
                    plan,
                    variant,
                    store,
                    preflights.get(variant.name),
                    progress,
                    tasks[variant.name],
                )

            variants = runner.map(job, list(plan.variants))
        results = StudyResults(
            quantbench_version=__version__,
            created_at=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            model=model.describe(),
            config=config.model_dump(mode="json"),
            calibration=calibration,
            variants=variants,
        )
        save_results(out, results)
    return results


def _preflight(
    plan: StudyPlan, pending: list[VariantPlan], console: Console
) -> dict[str, Preflight]:
    if not pending:
        return {}
    info = inspect_model(plan.model.path)
    outcomes = preflight_variants(pending, info, plan.config.calibration, available_memory_bytes())
    problems = [p for outcome in outcomes.values() for p in outcome.problems]
    for name, outcome in outcomes.items():
        for decision in outcome.decisions:
            console.print(f"[yellow]pre-flight[/] {name}: {decision}")
    if problems:
        raise UserError("pre-flight found problems: " + "; ".join(problems))
    return outcomes


def _calibration(
    plan: StudyPlan, pending: list[VariantPlan], store: StageStore, console: Console
) -> CalibrationRecord | None:
    ref = plan.calibration
    if ref is None:
        return None
    if not store.is_done(ref):
        if not any(v.needs_calibration for v in pending):
            return None
        with console.status("preparing calibration samples"):
            prepare_calibration(store, ref, plan.config.calibration, plan.model)
    manifest = store.manifest(ref)
    if manifest["num_samples"] < manifest["num_samples_requested"]:
        console.print(
            f"[yellow]calibration: only {manifest['num_samples']} of "
            f"{manifest['num_samples_requested']} requested samples were available"
        )
    return CalibrationRecord(
        key=ref.key,
        source=manifest["source"],
        num_samples=manifest["num_samples"],
        seq_len=manifest["seq_len"],
        seed=manifest["seed"],
        total_tokens=manifest["total_tokens"],
        samples_sha256=manifest["samples_sha256"],
    )


def _progress(console: Console) -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description:<18}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[phase]}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )


def _quantize_variant(
    plan: StudyPlan,
    variant: VariantPlan,
    store: StageStore,
    preflight: Preflight | None,
    progress: Progress,
    task: TaskID,
) -> VariantResult:
    if store.is_done(variant.quantize):
        progress.update(task, total=1, completed=1, phase="cached")
        return _variant_result(variant, store.manifest(variant.quantize), store)
    assert preflight is not None, "pending variants always have a pre-flight outcome"
    progress.update(task, phase="starting")
    request: dict[str, Any] = {
        "model_path": str(plan.model.path),
        "scheme": variant.scheme.name,
        "options": preflight.resolved_options,
        "seq_len": plan.config.calibration.seq_len,
        "calibration_samples": (
            str(store.path(plan.calibration) / SAMPLES_FILE)
            if variant.needs_calibration and plan.calibration
            else None
        ),
    }

    def on_progress(update: WorkerProgress) -> None:
        if update.total is not None:
            progress.update(task, total=update.total, completed=update.done, phase=update.phase)
        else:
            progress.update(task, phase=update.phase)

    with store.build(variant.quantize) as work:
        try:
            outcome = run_worker(request, work, on_progress)
        except StageFailed as exc:
            kept = _keep_log(store, variant, work)
            progress.update(task, phase="[red]failed")
            return VariantResult(
                name=variant.name,
                scheme=variant.scheme.name,
                status="failed",
                error=str(exc),
                log_path=str(kept) if kept else None,
                options_requested=variant.requested,
                options=preflight.resolved_options,
                decisions=preflight.decisions,
                notes=preflight.notes,
                needs_calibration=variant.needs_calibration,
                stage_keys=_stage_keys(plan, variant),
            )
        artifact = work / ARTIFACT_DIR
        manifest = {
            "scheme": variant.scheme.name,
            "options_requested": variant.requested,
            "options": preflight.resolved_options,
            "decisions": preflight.decisions,
            "notes": preflight.notes,
            "needs_calibration": variant.needs_calibration,
            "calibration_key": plan.calibration.key
            if variant.needs_calibration and plan.calibration
            else None,
            "model_fingerprint": plan.model.fingerprint,
            "quantization": outcome,
            "disk_bytes": dir_bytes(artifact, WEIGHT_SUFFIXES),
            "artifact_bytes": dir_bytes(artifact),
        }
        store.commit(variant.quantize, work, manifest)
    progress.update(task, total=1, completed=1, phase="done")
    return _variant_result(variant, store.manifest(variant.quantize), store)


def _keep_log(store: StageStore, variant: VariantPlan, work: Path) -> Path | None:
    """Copy a failed stage's log beside the stages (the stage folder itself is discarded)."""
    log = work / "quantize.log"
    if not log.is_file():
        return None
    dest = store.root / "failed" / f"{variant.name}-{variant.quantize.key}.log"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(log.read_bytes())
    return dest


def _stage_keys(plan: StudyPlan, variant: VariantPlan) -> dict[str, str]:
    keys = {"quantize": variant.quantize.key}
    if variant.needs_calibration and plan.calibration:
        keys["calibration"] = plan.calibration.key
    return keys


def _variant_result(
    variant: VariantPlan,
    manifest: dict[str, Any],
    store: StageStore,
) -> VariantResult:
    keys = {"quantize": variant.quantize.key}
    if manifest.get("calibration_key"):
        keys["calibration"] = manifest["calibration_key"]
    return VariantResult(
        name=variant.name,
        scheme=manifest["scheme"],
        status="ok",
        artifact_path=str((store.path(variant.quantize) / ARTIFACT_DIR).resolve()),
        options_requested=manifest["options_requested"],
        options=manifest["options"],
        decisions=manifest["decisions"],
        notes=manifest["notes"],
        needs_calibration=manifest["needs_calibration"],
        quantization=QuantizationRecord.model_validate(manifest["quantization"]),
        disk_bytes=manifest["disk_bytes"],
        artifact_bytes=manifest["artifact_bytes"],
        stage_keys=keys,
    )
