"""The request each quantbench worker reads, and the manifest it commits, as typed records.

A request crosses a process boundary (with Ray, a node too) as JSON: the driver builds it as
one of these records (pydantic validates it there), the executor writes its JSON as the
worker's request file, and the worker reads it back with `read_request`, which validates it
again; a file that is not such a request (another quantbench version's, a hand-edited one)
ends the worker with one line naming the file and the first field that is wrong. Unknown
fields are refused on both ends, so a field the driver sends and the worker would ignore is a
mistake found at once.

A stage's manifest on disk is the record's fields next to the stage store's own
(`store.STORE_FIELDS`: stage, key, files, attempt); `stage_record` reads the record back out
of it. The on-disk format is what it was when these were dicts: existing studies read as
before.

The vLLM worker is not here: it runs in vLLM's environment and never imports quantbench
(`backends/vllm_worker.py` has its own line protocol).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from quantbench.config import CalibrationDtype, EvaluationConfig
from quantbench.results import MixedSearchRecord, QuantizationRecord
from quantbench.store import STORE_FIELDS, StageRef


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class WorkerRequestError(RuntimeError):
    """A request file a worker cannot carry out: not JSON, or not the record it expects."""


Request = TypeVar("Request", bound=_Record)


def read_request(path: Path, kind: type[Request]) -> Request:
    """Worker side: the request in `path`, validated as `kind`; WorkerRequestError (one
    line: the file, the first wrong field and what is wrong with it) if it is not one."""
    try:
        return kind.model_validate_json(path.read_bytes())
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "the top level"
        count = exc.error_count()
        more = f" (and {count - 1} more)" if count > 1 else ""
        raise WorkerRequestError(
            f"{path} is not a valid {kind.__name__}: {where}: {first['msg']}{more}"
        ) from None


def request_json(request: _Record) -> dict[str, Any]:
    """Driver side: what the executor writes as the request file (and sends to a Ray node)."""
    return request.model_dump(mode="json")


Stage = TypeVar("Stage", bound=_Record)


def stage_record(manifest: Mapping[str, Any], kind: type[Stage]) -> Stage:
    """The record a worker committed, out of the stage's manifest (the store's own fields
    set aside)."""
    return kind.model_validate({k: v for k, v in manifest.items() if k not in STORE_FIELDS})


# --- quantization ------------------------------------------------------------------------


class _PlacedRequest(_Record):
    """A worker request's placement: the threads it computes with and the cores they run on
    (`schedule.Placement`)."""

    threads: int | None = Field(
        default=None,
        ge=1,
        description="torch threads this worker computes with (None: torch's default); "
        "provenance, not part of any key",
    )
    cpus: list[int] | None = Field(
        default=None, description="the cores the scheduler gave this worker (None: any)"
    )


class QuantizePlan(_Record):
    """What the driver decided for a variant before quantizing it; the worker copies it into
    the stage's manifest, so a finished stage describes its variant without the plan."""

    scheme: str = Field(description="registry name of the scheme")
    options_requested: dict[str, Any] = Field(description="options as the config gave them")
    options: dict[str, Any] = Field(description="options after pre-flight resolved them")
    decisions: list[str] = Field(description="what pre-flight chose, and why")
    notes: list[str] = Field(description="caveats pre-flight found")
    needs_calibration: bool
    calibration_key: str | None = Field(description="the calibration stage's key, if any")
    model_fingerprint: str = Field(description="the resolved model's content fingerprint")
    mixed: MixedSearchRecord | None = Field(
        default=None,
        exclude_if=lambda mixed: mixed is None,
        description="a mixed-precision variant's allocation, searched by the driver",
    )


class QuantizeRequest(_PlacedRequest):
    """`python -m quantbench.quantize REQUEST.json`: quantize one variant into its stage."""

    variant: str
    output: str = Field(description="the study's output folder: a path or a URL")
    stage: StageRef = Field(description="the quantize stage to commit")
    model: dict[str, Any] = Field(description="`ResolvedModel.describe()` of the driver")
    scheme: str
    options: dict[str, Any] = Field(description="resolved options, as the scheme takes them")
    seq_len: int = Field(gt=0, description="calibration sample length, tokens")
    calibration: StageRef | None = Field(description="the calibration stage, if it calibrates")
    compute_dtype: CalibrationDtype = Field(description="dtype to calibrate in (auto: chosen)")
    manifest: QuantizePlan = Field(description="copied into the committed stage's manifest")


class QuantizedStage(QuantizePlan):
    """A committed quantize stage's manifest (beside the store's fields)."""

    quantization: QuantizationRecord
    disk_bytes: int = Field(ge=0, description="bytes of the weight files")
    artifact_bytes: int = Field(ge=0, description="bytes of the whole artifact folder")


# --- sensitivity -------------------------------------------------------------------------


class ScreenGroup(_Record):
    name: str
    layer: int | None
    kind: str
    linears: list[str]
    sizes_bytes: list[int]


class SensitivityRequest(_PlacedRequest):
    """`python -m quantbench.sensitivity REQUEST.json`: screen every group of a model."""

    output: str = Field(description="the study's output folder: a path or a URL")
    stage: StageRef = Field(description="the sensitivity stage to commit")
    model: dict[str, Any] = Field(description="`ResolvedModel.describe()` of the driver")
    calibration: StageRef = Field(description="the calibration stage the search sample is from")
    search_tokens: int = Field(gt=0)
    candidates: list[str]
    candidate_options: dict[str, dict[str, Any]] = Field(
        description="each candidate's options as pre-flight resolved them"
    )
    granularity: str
    groups: list[ScreenGroup]
    fixed_bytes: int = Field(ge=0)
    search_source: str
    disjoint_from_evaluation: bool | None


class SensitivityStage(_Record):
    """A committed sensitivity stage's manifest; the table is in its sensitivity.json."""

    candidates: list[str]
    groups: int
    search_tokens: int
    wall_s: float
    peak_rss_bytes: int


# --- evaluation --------------------------------------------------------------------------


DivergenceMethod = Literal["exact", "topk_tail"]
"""exact: from both full distributions; topk_tail: from the stored top-k and tail mass."""


class DivergenceChoice(_Record):
    """How the study computes divergence, and why (see `evaluate.DivergencePlan`)."""

    method: DivergenceMethod = "exact"
    detail: str = ""


class EvaluateRequest(_PlacedRequest):
    """`python -m quantbench.evaluate REQUEST.json`: a variant's pending metric stages."""

    artifact: StageRef = Field(description="the variant's quantize stage")
    variant: str
    is_baseline: bool
    config: EvaluationConfig
    output: str = Field(description="the study's output folder: a path or a URL")
    pending: list[tuple[str, str]] = Field(description="(stage name, key) still to compute")
    own_keys: dict[str, str] = Field(description="stage name -> key, this variant's")
    baseline_keys: dict[str, str] = Field(description="stage name -> key, the baseline's")
    corpus_key: str | None = Field(description="the corpus stage, when a metric scores text")
    divergence: DivergenceChoice = DivergenceChoice()
    baseline_artifact: StageRef | None = Field(
        default=None, description="the baseline's quantize stage, for exact divergence"
    )
    alone: bool = Field(
        default=False, description="the scheduler runs no other stage while this worker runs"
    )
    cores_file: str | None = Field(
        default=None,
        description="a file where the scheduler may widen `cpus` while the worker runs "
        "(process/child.py CoreGrant); None: the cores stay",
    )


class MetricStage(_Record):
    """A committed metric stage's manifest (beside the store's fields): the record a metric
    computed, which `results.VariantMetrics` validates by the metric's name."""

    metric: str = Field(description="stage name (`tasks:<task>` for one task)")
    variant: str
    record: dict[str, Any]
    wall_s: float | None = Field(
        default=None, description="seconds this stage took in its worker, a model load included"
    )
    peak_rss_bytes: int | None = Field(
        default=None,
        description="the worker's peak resident memory when this stage finished, bytes; it "
        "covers the stages the same worker ran before it",
    )
    peak_anonymous_bytes: int | None = Field(
        default=None,
        description="the worker's peak anonymous resident memory while this stage ran, bytes "
        "(sampled; RSS less the file-backed pages the kernel can drop)",
    )
    engine_peak_bytes: int | None = Field(
        default=None,
        description="peak memory of the backend's own processes (the vLLM worker and its "
        "engine: summed PSS, sampled), bytes; None for a backend in the worker itself",
    )
    threads: int | None = Field(
        default=None,
        description="torch's intra-op threads in the worker when it started this stage",
    )
    threads_raised_to: int | None = Field(
        default=None,
        description="stages computed while the scheduler still raised a worker's threads "
        "with its cores: the count it raised them to; None for every stage since",
    )
    cores: int | None = Field(
        default=None, description="cores the worker ran on when it started this stage (None: any)"
    )
    cores_raised_to: int | None = Field(
        default=None,
        description="the cores the scheduler widened the worker to while it computed this "
        "stage (cores another job freed; the threads stay); None: `cores` throughout",
    )
    ran_alone: bool | None = Field(
        default=None, description="whether the study ran no other stage beside this worker"
    )
