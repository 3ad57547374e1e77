"""Per-group sensitivity: how much KL to the baseline quantizing one group of layers adds.

The screen runs in a worker process (`python -m quantbench.sensitivity REQUEST.json`) and
commits a `sensitivity` stage whose `sensitivity.json` is a `results.SensitivityRecord`.
For every group of Linear layers (`schemes.mixed.layer_groups`) and every candidate scheme,
the group's weights are replaced in memory by their round-to-nearest quantize-dequantize in
the candidate's exact format (compressed-tensors' own `calculate_qparams` and
`fake_quantize`, min-max scales as its observers fit them), every other layer kept in the
baseline's precision, and the mean per-token KL(baseline ‖ model) on the search sample is
measured with `stats.divergence.kl_divergence_per_token`, the function the divergence metric
uses. Only the decoder layers from the group's own onwards are recomputed: the inputs of
every layer are cached from one baseline pass.

What it measures and how that relates to the artifact: GPTQ corrects each column's rounding
error with the layer's calibration Hessian, so a group's GPTQ effect is smaller than its
round-to-nearest effect; the screen ranks groups, and `benchmarks/sensitivity_vs_gptq.py`
checks that ranking against GPTQ on a sample of groups. The search then assumes effects
add up over groups, which the mixed variant's measured KL tests.

The search sample is the study's calibration samples (their first `search_tokens` tokens),
never the evaluation windows: the driver checks the two share no 32-token span.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from quantbench.calibration import SAMPLES_FILE, read_samples
from quantbench.corpus import read_windows
from quantbench.errors import UserError
from quantbench.executors.base import Launch, Resources
from quantbench.models import ModelInfo, locate_model
from quantbench.output import OutputFolder
from quantbench.plan import VariantPlan
from quantbench.process.child import (
    die_with_parent,
    emit,
    limit_threads,
    peak_rss_bytes,
    run_on_cpus,
)
from quantbench.process.requests import (
    ScreenGroup,
    SensitivityRequest,
    SensitivityStage,
    read_request,
    request_json,
)
from quantbench.process.workers import failure, run_python_worker
from quantbench.results import (
    FrontPoint,
    MixedSearchRecord,
    SearchRound,
    SensitivityGroup,
    SensitivityRecord,
)
from quantbench.schemes import get_scheme
from quantbench.schemes.mixed import MixedPrecision, budget_bytes
from quantbench.stats.divergence import kl_divergence_per_token
from quantbench.stats.knapsack import (
    BudgetUnreachable,
    least_kl_within_size,
    predicted_front,
    smallest_within_kl,
)
from quantbench.store import StageRef, StageStore

SENSITIVITY_FILE = "sensitivity.json"
SHARED_SPAN_TOKENS = 32
SCREEN_DTYPE = "float32"
"""The screen computes in float32 whatever the study's dtype: in bf16, any change to one
group's weights moves the rounding of everything after it, and on the built-in model that
alone measured about 0.002 nats/token per group, more than an 8-bit group's own effect."""
METHOD = (
    "KL(baseline ‖ model) with only this group quantized by round-to-nearest in the "
    "candidate's format (compressed-tensors' qparams, min-max), every other layer in the "
    "baseline's precision; mean over the search sample's tokens, nats per token"
)


def search_sample(samples: Sequence[Sequence[int]], tokens: int) -> list[list[int]]:
    """The first `tokens` tokens of `samples`, sample by sample (the last one cut short;
    a piece shorter than two tokens predicts nothing and is left out)."""
    taken: list[list[int]] = []
    left = tokens
    for sample in samples:
        if left <= 0:
            break
        piece = list(sample[:left])
        if len(piece) >= 2:
            taken.append(piece)
            left -= len(piece)
    return taken


def shares_span(
    first: Iterable[Sequence[int]], second: Iterable[Sequence[int]], span: int = SHARED_SPAN_TOKENS
) -> bool:
    """Whether any `span` consecutive tokens of a sequence in `first` also occur in one of
    `second` (a search sample against evaluation windows)."""
    seen = {tuple(seq[i : i + span]) for seq in second for i in range(max(0, len(seq) - span + 1))}
    return any(
        tuple(seq[i : i + span]) in seen
        for seq in first
        for i in range(max(0, len(seq) - span + 1))
    )


def run_sensitivity_worker(
    request: SensitivityRequest,
    logs: Path,
    on_progress: Callable[[int, int], None],
    launch: Launch = run_python_worker,
    resources: Resources | None = None,
) -> None:
    """Run the screen's worker; StageFailed (naming its log) unless it committed the stage."""
    finished: list[bool] = []

    def on_event(event: dict[str, Any]) -> None:
        finished.append(event.get("phase") == "committed")
        if "done" in event and "total" in event:
            on_progress(int(event["done"]), int(event["total"]))

    logs.mkdir(parents=True, exist_ok=True)
    log_path = logs / "sensitivity.log"
    returncode = launch(
        "quantbench.sensitivity",
        request_json(request),
        logs / "sensitivity.request.json",
        log_path,
        on_event,
        lambda _: None,
        resources=resources,
    )
    if returncode != 0 or not any(finished):
        raise failure("sensitivity", returncode, log_path)


def read_sensitivity(stage_dir: Path) -> SensitivityRecord:
    return SensitivityRecord.model_validate_json((stage_dir / SENSITIVITY_FILE).read_bytes())


def screen_request(
    variant: VariantPlan,
    options: dict[str, Any],
    info: ModelInfo,
    described_model: dict[str, Any],
    store: StageStore,
    output: str,
    corpus: StageRef | None,
) -> SensitivityRequest:
    """The screen's request for a mixed variant (its resolved `options`): the groups and
    their sizes from the model's shapes, and whether the search sample (the variant's
    calibration samples) is disjoint from the evaluation windows."""
    scheme = variant.scheme
    assert isinstance(scheme, MixedPrecision) and variant.sensitivity and variant.calibration
    table = scheme.group_table(info, options)
    own = scheme.candidate_options(info, options).resolved_options
    samples = search_sample(
        read_samples(store.path(variant.calibration) / SAMPLES_FILE), options["search_tokens"]
    )
    disjoint = None
    if corpus is not None and store.is_done(corpus):
        disjoint = not shares_span(samples, read_windows(store.path(corpus)).windows)
    settings = variant.calibration_config
    source = settings.source if settings else "calibration"
    return SensitivityRequest(
        output=output,
        stage=variant.sensitivity,
        model=described_model,
        calibration=variant.calibration,
        search_tokens=int(options["search_tokens"]),
        candidates=list(table.candidates),
        candidate_options=own,
        granularity=str(options["granularity"]),
        groups=[
            ScreenGroup(
                name=group.name,
                layer=group.layer,
                kind=group.kind,
                linears=[linear.name for linear in group.linears],
                sizes_bytes=list(sizes),
            )
            for group, sizes in zip(table.groups, table.sizes, strict=True)
        ],
        fixed_bytes=table.fixed_bytes,
        search_source=f"calibration samples ({source}), first {options['search_tokens']} tokens",
        disjoint_from_evaluation=disjoint,
    )


def search_allocation(
    record: SensitivityRecord, options: dict[str, Any]
) -> tuple[MixedSearchRecord, dict[str, list[str]]]:
    """The allocation a mixed variant's budget asks for, from the screen's table: the
    search's record, and candidate -> Linear names for the recipe. UserError when the
    budget cannot be met."""
    sizes = [group.sizes_bytes for group in record.groups]
    kls = [group.kl_increase for group in record.groups]
    size_budget = budget_bytes(options)
    try:
        if size_budget is not None:
            chosen = least_kl_within_size(sizes, kls, record.fixed_bytes, size_budget)
        else:
            chosen = smallest_within_kl(sizes, kls, record.fixed_bytes, float(options["max_kl"]))
    except BudgetUnreachable as exc:
        raise UserError(f"mixed: {exc}") from None
    allocation = {
        group.name: record.candidates[c]
        for group, c in zip(record.groups, chosen.choices, strict=True)
    }
    layers: dict[str, list[str]] = {name: [] for name in record.candidates}
    for group, c in zip(record.groups, chosen.choices, strict=True):
        layers[record.candidates[c]] += group.linears
    search = MixedSearchRecord(
        budget="target_size" if size_budget is not None else "max_kl",
        budget_value=float(size_budget if size_budget is not None else options["max_kl"]),
        candidates=record.candidates,
        allocation=allocation,
        counts={
            name: sum(1 for c in allocation.values() if c == name) for name in record.candidates
        },
        predicted_kl=chosen.predicted_kl,
        predicted_size_bytes=chosen.size_bytes,
        front=[
            FrontPoint(size_bytes=point.size_bytes, predicted_kl=point.predicted_kl)
            for point in predicted_front(sizes, kls, record.fixed_bytes)
        ],
        sensitivity_key=record.stage_key,
    )
    return search, layers


def search_logprobs(model: Any, sample: list[list[int]]) -> list[Any]:
    """Full-vocabulary log-probabilities (float32 numpy, one array per sequence) of `model`
    on the search sample."""
    import torch

    with torch.no_grad():
        return [
            torch.log_softmax(
                model(torch.tensor([ids]), use_cache=False).logits[0].float(), -1
            ).numpy()
            for ids in sample
        ]


def sample_kl(baseline: list[Any], variant: list[Any]) -> float:
    """Mean KL(baseline ‖ variant) over every token of the search sample, nats/token."""
    total = sum(
        float(kl_divergence_per_token(b, v, renormalize=True).sum())
        for b, v in zip(baseline, variant, strict=True)
    )
    return total / sum(len(b) for b in baseline)


def refine_mixed(
    search: MixedSearchRecord,
    options: dict[str, Any],
    quantized: Any,
    baseline: Callable[[], Any],
    requantize: Callable[[dict[str, list[str]]], Any],
    store: StageStore,
    calibration: StageRef,
) -> tuple[Any, MixedSearchRecord]:
    """Measure the GPTQ-quantized allocation on the search sample and, under a KL budget,
    search once more with the screen rescaled to what GPTQ achieved; the model to save and
    the search's record with its rounds. `baseline()` loads the baseline in the quantized
    model's dtype; `requantize(layers)` quantizes a fresh copy with another allocation."""
    record = read_sensitivity(store.path(StageRef("sensitivity", search.sensitivity_key)))
    sample = search_sample(
        read_samples(store.path(calibration) / SAMPLES_FILE), record.search_tokens
    )
    reference = baseline()
    base = search_logprobs(reference, sample)
    del reference
    measured = sample_kl(base, search_logprobs(quantized, sample))
    first = SearchRound(
        counts=search.counts,
        predicted_kl=search.predicted_kl,
        predicted_size_bytes=search.predicted_size_bytes,
        search_kl=measured,
        kept=True,
    )
    if search.budget != "max_kl":
        return quantized, search.model_copy(update={"rounds": [first]})
    target = search.budget_value * float(options["kl_headroom"])
    if not 0 < measured < target or search.predicted_kl <= 0:
        return quantized, search.model_copy(update={"rounds": [first]})
    scale = measured / search.predicted_kl
    again, layers = search_allocation(record, {**options, "max_kl": target / scale})
    if again.allocation == search.allocation:
        return quantized, search.model_copy(update={"rounds": [first]})
    emit("quantizing")
    candidate = requantize(layers)
    remeasured = sample_kl(base, search_logprobs(candidate, sample))
    keep = remeasured <= target
    second = SearchRound(
        counts=again.counts,
        predicted_kl=again.predicted_kl,
        predicted_size_bytes=again.predicted_size_bytes,
        search_kl=remeasured,
        kept=keep,
    )
    rounds = [first.model_copy(update={"kept": not keep}), second]
    if not keep:
        return quantized, search.model_copy(update={"rounds": rounds})
    chosen = again.model_copy(
        update={"budget_value": search.budget_value, "rounds": rounds, "front": search.front}
    )
    return candidate, chosen


def _worker_main(request_path: Path) -> None:
    die_with_parent()
    request = read_request(request_path, SensitivityRequest)
    limit_threads(request.threads)
    run_on_cpus(request.cpus)
    store = OutputFolder.open(request.output).stages()
    if store.is_done(request.stage):
        emit("committed")
        return
    with store.build(request.stage) as work:
        record = measure(request, store.path(request.calibration) / SAMPLES_FILE)
        (work / SENSITIVITY_FILE).write_text(record.model_dump_json(indent=1))
        manifest = SensitivityStage(
            candidates=record.candidates,
            groups=len(record.groups),
            search_tokens=record.search_tokens,
            wall_s=record.wall_s,
            peak_rss_bytes=record.peak_rss_bytes,
        )
        store.commit(request.stage, work, manifest.model_dump(mode="json"))
    emit("committed")


def round_to_nearest(weight: Any, args: Any) -> Any:
    """`weight` quantized and dequantized in the format `args` (compressed-tensors'
    QuantizationArgs: int, per group or per channel) with min-max scales, as a tensor of
    the weight's dtype."""
    from compressed_tensors.quantization.lifecycle.forward import fake_quantize
    from compressed_tensors.quantization.utils import calculate_qparams

    values = weight.float()
    rows, columns = values.shape
    if args.strategy == "group":
        grouped = values.reshape(rows, columns // args.group_size, args.group_size)
        low, high = grouped.amin(dim=-1), grouped.amax(dim=-1)
    elif args.strategy == "channel":
        low, high = values.amin(dim=1, keepdim=True), values.amax(dim=1, keepdim=True)
    else:
        raise ValueError(f"the screen handles group and channel weights, not {args.strategy}")
    scale, zero_point = calculate_qparams(low, high, args)
    return fake_quantize(values, scale, zero_point, args).to(weight.dtype)


def measure(request: SensitivityRequest, samples_path: Path) -> SensitivityRecord:
    """The screen itself (see the module docstring); emits progress per group."""
    started = time.perf_counter()
    import torch
    from transformers import AutoModelForCausalLM

    dtype = SCREEN_DTYPE
    emit("loading")
    model: Any = AutoModelForCausalLM.from_pretrained(
        locate_model(request.model), dtype=getattr(torch, dtype)
    )
    model.eval()
    body = getattr(model, "model", None)
    layers = getattr(body, "layers", None)
    norm = getattr(body, "norm", None)
    head = model.get_output_embeddings()
    if layers is None or norm is None or head is None:
        raise SystemExit(
            "sensitivity: the screen needs a decoder-only model with model.layers, model.norm "
            f"and an output embedding; {type(model).__name__} has not"
        )
    sample = search_sample(read_samples(samples_path), request.search_tokens)
    n_tokens = sum(len(s) for s in sample)

    inputs: list[list[Any]] = [[] for _ in layers]
    layer_kwargs: list[dict[str, Any]] = []
    hooks = []
    for index, layer in enumerate(layers):

        def keep(_module: Any, args: Any, kwargs: Any, index: int = index) -> None:
            hidden = args[0] if args else kwargs["hidden_states"]
            inputs[index].append(hidden.detach().clone())
            if index == 0:
                layer_kwargs.append({k: v for k, v in kwargs.items() if k != "hidden_states"})

        hooks.append(layer.register_forward_pre_hook(keep, with_kwargs=True))

    emit("baseline")
    baseline = search_logprobs(model, sample)  # the hooks cache every layer's inputs
    for hook in hooks:
        hook.remove()

    def kl_from(first_layer: int | None) -> float:
        total = 0.0
        with torch.no_grad():
            for s, ids in enumerate(sample):
                if first_layer is None:
                    logits = model(torch.tensor([ids]), use_cache=False).logits[0]
                else:
                    hidden = inputs[first_layer][s]
                    for layer in layers[first_layer:]:
                        out = layer(hidden, **layer_kwargs[s])
                        hidden = out[0] if isinstance(out, tuple) else out
                    logits = head(norm(hidden))[0]
                variant = torch.log_softmax(logits.float(), dim=-1).numpy()
                total += float(
                    kl_divergence_per_token(baseline[s], variant, renormalize=True).sum()
                )
        return total / n_tokens

    schemes = [get_scheme(name) for name in request.candidates]
    formats = [
        scheme.weight_args(request.candidate_options[scheme.name])
        if hasattr(scheme, "weight_args")
        else None
        for scheme in schemes
    ]
    groups = []
    total = len(request.groups)
    for done, group in enumerate(request.groups):
        emit("screening", done=done, total=total)
        increases = []
        for args in formats:
            if args is None:  # the baseline's own precision: nothing changes
                increases.append(0.0)
                continue
            modules = [model.get_submodule(name) for name in group.linears]
            originals = [module.weight.data for module in modules]
            for module, original in zip(modules, originals, strict=True):
                module.weight.data = round_to_nearest(original, args)
            try:
                increases.append(kl_from(group.layer))
            finally:
                for module, original in zip(modules, originals, strict=True):
                    module.weight.data = original
        groups.append(
            SensitivityGroup(
                name=group.name,
                layer=group.layer,
                kind=group.kind,
                linears=group.linears,
                sizes_bytes=group.sizes_bytes,
                kl_increase=increases,
            )
        )
    emit("screening", done=total, total=total)
    return SensitivityRecord(
        stage_key=request.stage.key,
        candidates=request.candidates,
        granularity=request.granularity,
        search_tokens=n_tokens,
        search_source=request.search_source,
        disjoint_from_evaluation=request.disjoint_from_evaluation,
        compute_dtype=dtype,
        fixed_bytes=request.fixed_bytes,
        wall_s=time.perf_counter() - started,
        peak_rss_bytes=peak_rss_bytes(),
        torch_threads=torch.get_num_threads(),
        method=METHOD,
        groups=groups,
    )


if __name__ == "__main__":
    _worker_main(Path(sys.argv[1]))
