"""Typed, versioned study results: what `results.json` holds and reports are built from.

Reports read these records only, never live models, so a report can be rebuilt anywhere.
Bump SCHEMA_VERSION when a field changes meaning or is removed; adding a field is compatible.

This module is the schema only: it reads and writes nothing. Saving and loading results.json
(relative locations, migration of version 1, the reports written after it) is
`study_files.py`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = 2
"""1: absolute paths of artifacts and logs (read, and migrated, still); 2: relative ones."""


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


class QuantizationRecord(_Record):
    wall_s: float = Field(description="wall-clock seconds of the worker process, load to save")
    phases: dict[str, float] = Field(default_factory=dict, description="seconds per phase")
    peak_rss_bytes: int = Field(description="peak resident memory of the worker process, bytes")
    peak_anonymous_bytes: int | None = Field(
        default=None,
        description="peak anonymous resident memory of the worker (sampled every 50 ms), bytes: "
        "RSS less the file-backed pages the kernel can drop (mapped weight files)",
    )
    torch_threads: int | None = None
    cores: int | None = Field(
        default=None, description="cores the worker's threads ran on (None: any)"
    )
    compute_dtype: str | None = Field(
        default=None, description="what the model computed in while it was quantized"
    )
    notes: list[str] = Field(
        default_factory=list,
        description="how the worker carried the request out, e.g. why it calibrated in float32",
    )


class Spread(_Record):
    """Summary of repeated measurements (seconds, or tokens per second for throughput)."""

    n: int
    median: float
    p90: float
    mean: float
    min: float
    max: float
    cv: float = Field(description="coefficient of variation, std / mean")


class Interval(_Record):
    """A point estimate with its bootstrap confidence interval."""

    estimate: float
    low: float
    high: float
    confidence: float = 0.95


class SizeRecord(_Record):
    weights_bytes: int = Field(description="bytes of the weight files on disk")
    artifact_bytes: int = Field(description="bytes of the whole artifact folder on disk")
    param_bytes_by_dtype: dict[str, int] = Field(
        description="bytes of stored tensors per dtype, read from safetensors headers"
    )
    load_s: float = Field(description="seconds to load the artifact with the backend")
    rss_loaded_bytes: int = Field(
        description="resident memory of the evaluation process after load and a first forward"
    )
    rss_peak_generating_bytes: int = Field(
        description="peak resident memory of the evaluation process through generation"
    )
    gpu_peak_bytes: int | None = Field(default=None, description="peak CUDA memory allocated")
    backend: str
    device: str


class PerplexityRecord(_Record):
    corpus: str
    corpus_key: str
    tokens_sha256: str = Field(
        description="hash of the evaluated token ids; equal for all variants"
    )
    window: int
    stride: int
    n_windows: int
    n_tokens: int = Field(description="scored tokens (targets)")
    nll_mean: float = Field(description="mean negative log-likelihood, nats per token")
    perplexity: Interval
    delta_vs_baseline: Interval | None = Field(
        default=None, description="perplexity minus the baseline's, paired bootstrap over windows"
    )
    ratio_vs_baseline: float | None = None


class DivergenceRecord(_Record):
    """llama.cpp's `--kl-divergence` statistics; intervals resample windows."""

    n_tokens: int
    top_k: int = Field(description="baseline distribution stored as its top-k plus the tail mass")
    method: Literal["exact", "topk_tail"] = Field(
        default="topk_tail",
        description="exact: from the baseline's full distribution, recomputed next to the "
        "variant; topk_tail: from the stored top-k plus tail mass (a lower bound of KL)",
    )
    method_detail: str = Field(default="", description="why this method, in one sentence")
    kl_mean: Interval = Field(description="KL(baseline ‖ variant), nats per token")
    kl_median: float
    kl_p99: float
    kl_max: float
    kl_percentiles: dict[str, float] = Field(
        default_factory=dict,
        description="KL percentiles p99.9 p99 p95 p90 p50 p10 p5 p1 p0.1, min and max, nats",
    )
    top1_agreement: Interval = Field(description="fraction of tokens with the same argmax")
    ref_prob_delta: dict[str, float] = Field(
        description="variant minus baseline probability of the reference token: mean and "
        "percentiles (p99.9 ... p0.1), min and max, probability units"
    )
    ref_prob_delta_mean: Interval | None = Field(
        default=None, description="mean Δp with its interval, probability units"
    )
    ref_prob_delta_rms: Interval | None = Field(
        default=None, description="root mean square of Δp with its interval, probability units"
    )
    ln_ppl_ratio: Interval | None = Field(
        default=None, description="mean ln(PPL(variant)/PPL(baseline)), nats per token"
    )
    ppl_ratio: Interval | None = Field(default=None, description="PPL(variant) / PPL(baseline)")
    ln_ppl_correlation_tokens: float | None = Field(
        default=None,
        description="Pearson correlation of per-token NLLs, llama.cpp's Cor(ln(PPL(Q)), "
        "ln(PPL(base))); None when undefined",
    )
    ln_ppl_correlation_windows: float | None = Field(
        default=None, description="Pearson correlation of the windows' ln PPL; None when undefined"
    )
    approximation: dict[str, float] = Field(
        default_factory=dict,
        description="check of the top-k + tail approximation against exact full-vocabulary KL "
        "on the first tokens: check_tokens, kl_mean_exact, kl_mean_approx, max_abs_error",
    )


class SpeedPoint(_Record):
    batch_size: int
    prompt_tokens: int
    output_tokens: int
    ttft_s: Spread = Field(description="time to first token (prefill + first token), seconds")
    tpot_s: Spread = Field(description="time per output token after the first, seconds")
    e2e_s: Spread = Field(description="end-to-end latency for the whole batch, seconds")
    throughput_tok_s: Spread = Field(description="output tokens per second, whole batch")
    itl_s: Spread | None = Field(
        default=None,
        description="inter-token latency: every gap between consecutive tokens of a sequence "
        "over the measured runs, seconds (backends that see tokens arrive one by one: vllm)",
    )


class SpeedRecord(_Record):
    backend: str
    execution_mode: Literal["native", "emulated"]
    detail: str
    device: str
    threads: int | None = None
    warmup: int
    repeats: int
    points: list[SpeedPoint]
    startup_s: float | None = Field(
        default=None,
        description="seconds to load the model (vllm: engine start-up, compilation included), "
        "apart from the steady-state figures",
    )
    kernels: list[str] = Field(
        default_factory=list, description="quantized-layer kernel classes the runtime chose"
    )
    thread_binding: str | None = Field(
        default=None, description="vllm on CPU: the cores its OpenMP threads were bound to"
    )
    ran_alone: bool | None = Field(
        default=None,
        description="the study ran no other stage while these figures were measured "
        "(None: recorded before stages ran side by side)",
    )
    sample_output: str | None = Field(
        default=None,
        description="greedy continuation of the first timed prompt, checked beside the figure",
    )


class GenerationItem(_Record):
    id: str
    category: str
    prompt: str | None = Field(default=None, description="the last user message")
    text: str
    n_tokens: int
    exact_match: bool | None = Field(default=None, description="identical to the baseline's")
    rouge_l: float | None = Field(default=None, description="ROUGE-L F1 on token ids vs baseline")
    first_diff: int | None = Field(
        default=None, description="index of the first token that differs from the baseline's"
    )


class GenerationsRecord(_Record):
    suite: str
    suite_sha256: str
    max_new_tokens: int
    decoding: str = "greedy"
    n_prompts: int
    exact_match_rate: float | None = None
    rouge_l_mean: float | None = None
    first_diff_median: float | None = None
    items: list[GenerationItem]


class PairedTaskComparison(_Record):
    """The variant against the baseline on the same task items."""

    n_paired: int
    difference_points: Interval = Field(
        description="variant minus baseline accuracy, percentage points; paired bootstrap "
        "interval over items"
    )
    right_to_wrong: int = Field(description="items the baseline got right and the variant wrong")
    wrong_to_right: int = Field(description="items the baseline got wrong and the variant right")
    mcnemar_p: float | None = Field(
        default=None, description="two-sided exact McNemar p-value (None: scores not 0/1)"
    )


class TaskRecord(_Record):
    """One lm-evaluation-harness task (or group) on one variant."""

    task: str
    metric: str = Field(description="the lm-eval metric paired and reported, e.g. exact_match")
    filter: str = Field(description="the lm-eval filter the metric is read after")
    n_items: int
    accuracy: Interval = Field(description="mean item score, fraction 0–1")
    accuracy_interval: Literal["wilson", "bootstrap"] = "wilson"
    subtasks: dict[str, float] = Field(
        default_factory=dict, description="mean item score per subtask, fraction 0–1"
    )
    vs_baseline: PairedTaskComparison | None = None
    aggregates: dict[str, dict[str, float]] = Field(
        default_factory=dict, description="lm-eval's own aggregate figures per subtask"
    )
    settings: dict[str, Any] = Field(
        default_factory=dict,
        description="items, few-shot counts, chat template, generation cap, versions, sandbox",
    )
    data_files: dict[str, str] = Field(default_factory=dict, description="split → local file")
    wall_s: float = Field(description="seconds for this task on this variant")


class VariantMetrics(_Record):
    size: SizeRecord | None = None
    perplexity: PerplexityRecord | None = None
    divergence: DivergenceRecord | None = None
    speed: SpeedRecord | None = None
    generations: GenerationsRecord | None = None
    tasks: dict[str, TaskRecord] = Field(default_factory=dict, description="task name → record")
    plugins: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        exclude_if=lambda records: not records,
        description="records of metrics that installed packages register, by metric name "
        "(left out of results.json when there are none)",
    )
    errors: dict[str, str] = Field(default_factory=dict, description="metric name → why it failed")


class SensitivityGroup(_Record):
    """One group of Linear layers that always shares a format, and what each candidate costs."""

    name: str = Field(description="e.g. layers.3.qkv")
    layer: int | None = Field(description="decoder layer index; None outside the layers")
    kind: str = Field(description="qkv, o, gate_up, down, or a Linear's own name")
    linears: list[str] = Field(description="the Linear modules of the group")
    sizes_bytes: list[int] = Field(description="bytes of the group's weights per candidate")
    kl_increase: list[float] = Field(
        description="per candidate: KL(baseline ‖ model) on the search sample with only this "
        "group quantized, round-to-nearest, nats per token"
    )


class SensitivityRecord(_Record):
    """The sensitivity screen of a study: per group and candidate, bytes and the KL that
    quantizing just that group adds (`sensitivity.json`, beside results.json)."""

    stage_key: str
    candidates: list[str]
    granularity: str
    search_tokens: int = Field(description="tokens of the search sample the KL is measured on")
    search_source: str = Field(description="where the search sample comes from")
    disjoint_from_evaluation: bool | None = Field(
        default=None,
        description="the search sample shares no 32-token span with the evaluation windows "
        "(None: the study has no evaluation corpus)",
    )
    compute_dtype: str
    fixed_bytes: int = Field(description="bytes no choice changes: embeddings, norms, ignored")
    wall_s: float
    peak_rss_bytes: int
    torch_threads: int | None = None
    method: str = Field(description="what the screen measures, in words")
    groups: list[SensitivityGroup]


class FrontPoint(_Record):
    size_bytes: int
    predicted_kl: float = Field(description="nats per token, the sum of per-group increases")


class SearchRound(_Record):
    """One allocation the quantization worker built and measured while meeting a budget."""

    counts: dict[str, int] = Field(description="candidate -> groups allocated to it")
    predicted_kl: float = Field(description="the screen's additive prediction, nats/token")
    predicted_size_bytes: int
    search_kl: float = Field(
        description="KL(baseline ‖ the GPTQ-quantized allocation) on the search sample, "
        "nats/token, as the worker measured it"
    )
    kept: bool = Field(description="the allocation saved as the artifact")


class MixedSearchRecord(_Record):
    """How a mixed-precision variant was chosen: its budget, the allocation, the prediction
    (additive over groups, from the sensitivity screen) and the predicted front around it."""

    budget: Literal["target_size", "max_kl"]
    budget_value: float = Field(description="bytes for target_size, nats/token for max_kl")
    candidates: list[str]
    allocation: dict[str, str] = Field(description="group name -> candidate")
    counts: dict[str, int] = Field(description="candidate -> groups allocated to it")
    predicted_kl: float = Field(description="nats per token")
    predicted_size_bytes: int
    front: list[FrontPoint] = Field(default_factory=list)
    sensitivity_key: str
    rounds: list[SearchRound] = Field(
        default_factory=list,
        description="the allocations built and measured on the search sample (a KL budget "
        "is searched again once, with the screen rescaled to GPTQ's measured effect)",
    )


class VariantResult(_Record):
    name: str
    scheme: str
    study: str = Field(
        default="",
        exclude_if=lambda study: not study,
        description="in merged results (several models, `quantbench compare`): the study the "
        "variant comes from, whose baseline it is compared with; '' in one study",
    )
    status: Literal["ok", "failed"]
    error: str | None = None
    log_path: str | None = Field(
        default=None, description="the worker's log; relative to the study folder on disk"
    )
    artifact_path: str | None = Field(
        default=None,
        description="the artifact folder (`artifacts/<variant>`); relative to the study "
        "folder on disk, a URL for a study at a URL",
    )
    options_requested: dict[str, Any] = Field(default_factory=dict)
    options: dict[str, Any] = Field(
        default_factory=dict, description="options actually used, after pre-flight decisions"
    )
    decisions: list[str] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)
    axes: dict[str, Any] = Field(
        default_factory=dict,
        description="study-matrix coordinates, e.g. {group_size: 32, calibration.num_samples: 16}",
    )
    needs_calibration: bool = False
    quantization: QuantizationRecord | None = None
    disk_bytes: int | None = Field(default=None, description="bytes of the weight files")
    artifact_bytes: int | None = Field(default=None, description="bytes of the whole artifact")
    stage_keys: dict[str, str] = Field(default_factory=dict)
    mixed: MixedSearchRecord | None = Field(
        default=None,
        exclude_if=lambda mixed: mixed is None,
        description="a mixed-precision variant's search: allocation and prediction",
    )
    metrics: VariantMetrics = Field(default_factory=VariantMetrics)


class CalibrationRecord(_Record):
    key: str
    source: str
    num_samples: int
    seq_len: int
    seed: int
    total_tokens: int
    samples_sha256: str


class Constraints(_Record):
    """What makes a variant acceptable; None means the constraint is not applied."""

    max_kl: float | None = Field(
        default=None, description="mean KL(baseline ‖ variant), nats/token"
    )
    max_ppl_increase_pct: float | None = Field(
        default=None, description="perplexity increase over the baseline, percent"
    )
    max_accuracy_drop: float | None = Field(
        default=None, description="task accuracy drop vs the baseline, percentage points"
    )
    non_inferiority_margin: float | None = Field(
        default=None,
        description="percentage points: a variant is rejected when a task's paired 95% "
        "interval lies wholly below minus this margin (shown inferior)",
    )
    default_budget: bool = Field(
        default=False,
        description="when no limit above is set, apply quantbench's default quality budget "
        "(docs/recommendation.md); studies set it unless --no-default-constraints",
    )


class VariantVerdict(_Record):
    variant: str
    acceptable: bool
    broken: list[str] = Field(
        default_factory=list, description="each constraint this variant breaks, with its values"
    )
    unknown: list[str] = Field(
        default_factory=list, description="constraints that could not be checked (metric missing)"
    )


class ObjectiveChoice(_Record):
    objective: Literal["smallest on disk", "lowest latency", "highest throughput"]
    variant: str | None = Field(description="the best acceptable variant, or None")
    value: float | None = None
    unit: str = ""
    judged: bool = Field(
        default=True, description="False when the figures cannot decide (e.g. emulated speed)"
    )
    reason: str = Field(description="one sentence a person can read")


class TaskVerdict(_Record):
    """One variant against its baseline on one task: recovery, the multiplicity-adjusted
    p-value and the non-inferiority verdict (see docs/recommendation.md)."""

    task: str
    variant: str
    n_items: int
    baseline_accuracy: float = Field(description="fraction 0–1")
    variant_accuracy: float = Field(description="fraction 0–1")
    difference_points: Interval = Field(
        description="variant minus baseline, percentage points; Bonett–Price interval for "
        "right/wrong scores, the record's paired bootstrap for graded ones"
    )
    recovery_pct: Interval | None = Field(
        default=None, description="variant ÷ baseline accuracy, percent; None: baseline 0"
    )
    recovery_method: Literal["delta", "from_difference"] | None = None
    p_value: float | None = Field(default=None, description="exact McNemar, two-sided")
    p_holm: float | None = Field(
        default=None, description="Holm-adjusted over the study's tasks × variants"
    )
    margin_points: float
    verdict: Literal["non-inferior", "inferior", "inconclusive: raise --limit"]


class Recommendation(_Record):
    constraints: Constraints
    budget: Literal["set", "default", "none"] | None = Field(
        default=None,
        description="where the limits came from: set by the user, quantbench's default "
        "quality budget, or none (every ok variant acceptable)",
    )
    quality_metric: str = Field(description="the quality axis of the Pareto fronts")
    verdicts: list[VariantVerdict]
    choices: list[ObjectiveChoice]
    pareto_size_quality: list[str] = Field(description="variants on the (size, quality) front")
    pareto_speed_quality: list[str] = Field(description="variants on the (speed, quality) front")
    pareto_size_ties: dict[str, list[str]] = Field(
        default_factory=dict,
        description="front variant → the no-larger variants whose quality intervals overlap "
        "its own: on the front only because the difference is within the intervals",
    )
    pareto_speed_ties: dict[str, list[str]] = Field(
        default_factory=dict, description="as pareto_size_ties, for the speed front"
    )
    tasks: list[TaskVerdict] = Field(
        default_factory=list, description="per task and variant, against the baseline"
    )
    speed_judged: bool = Field(description="False when speed figures are emulated")
    summary: str


class StudyResults(_Record):
    schema_version: int = SCHEMA_VERSION
    quantbench_version: str
    created_at: str
    model: dict[str, Any]
    config: dict[str, Any]
    calibration: CalibrationRecord | None = Field(
        default=None, description="the first calibration setting (the only one outside a matrix)"
    )
    calibrations: list[CalibrationRecord] = Field(
        default_factory=list, description="every calibration setting of the study"
    )
    variants: list[VariantResult]
    sensitivity: SensitivityRecord | None = Field(
        default=None,
        exclude_if=lambda record: record is None,
        description="the per-group sensitivity screen, when the study has one",
    )
    recommendation: Recommendation | None = None
    provenance: dict[str, Any] = Field(
        default_factory=dict,
        description="versions, machine, seeds, hashes of inputs, the resolved config",
    )
    notes: list[str] = Field(
        default_factory=list, description="caveats a reader must see (e.g. metrics left out)"
    )

    def variant(self, name: str) -> VariantResult:
        for variant in self.variants:
            if variant.name == name:
                return variant
        raise KeyError(name)


BASELINE_SCHEMES = ("bf16", "fp16")
"""Schemes whose variant is the reference others are compared with: the catalogue's schemes
that do not quantize (`Scheme.quantizes` false; a test keeps the two in step)."""


def find_baseline(
    results: StudyResults, variant: VariantResult | None = None
) -> VariantResult | None:
    """The variant deltas are taken against: the first one with a baseline scheme, or, for
    `variant` in merged results, the first of its own study."""
    baselines = [v for v in results.variants if v.scheme in BASELINE_SCHEMES]
    if variant is not None:
        return next((b for b in baselines if b.study == variant.study), None)
    return baselines[0] if baselines else None


def weights_bytes(variant: VariantResult) -> int | None:
    """Bytes of the weight files: the size metric's reading, else the quantizer's."""
    size = variant.metrics.size
    return size.weights_bytes if size is not None else variant.disk_bytes
