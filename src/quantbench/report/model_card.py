"""A Hugging Face model card (README.md) in every artifact folder, from saved results only.

It says what the scheme is, how the artifact was made (recipe, calibration data, options
actually used), what was measured against the baseline (with intervals and the execution
mode of speed figures), and how to serve and load it. It names no path outside its own
folder: `vllm serve ./` and `from_pretrained("./")` work in the artifact folder, in the
study's `artifacts/<variant>/`, and in a model repository uploaded from either. Its front
matter links the base model (`base_model_relation: quantized`) and its license when the
study knows them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from quantbench.errors import UserError
from quantbench.models import BUILTIN_MODELS
from quantbench.remote import RemoteFolder, is_url
from quantbench.report.recovery_table import recovery_card
from quantbench.results import StudyResults, VariantResult, find_baseline
from quantbench.schemes import REGISTRY, get_scheme
from quantbench.store import write_text_atomic

CARD_FILE = "README.md"
BUILTIN_HUB_IDS = {"smollm2-135m-instruct": "HuggingFaceTB/SmolLM2-135M-Instruct"}
BUILTIN_LICENSES = {"smollm2-135m-instruct": "apache-2.0"}


def _base_model(results: StudyResults) -> str | None:
    """The base model's hub id, when the study knows one (a local folder may have none)."""
    model = results.model
    spec = str(model.get("spec", ""))
    if spec in BUILTIN_HUB_IDS:
        return BUILTIN_HUB_IDS[spec]
    hub_id = model.get("hub_id") or (spec if model.get("kind") == "hub" else None)
    return str(hub_id) if hub_id else None


def _license(results: StudyResults) -> str | None:
    spec = str(results.model.get("spec", ""))
    license_ = BUILTIN_LICENSES.get(spec) or results.model.get("license")
    return str(license_) if license_ else None


def _measured(variant: VariantResult, baseline: VariantResult | None) -> list[str]:
    metrics = variant.metrics
    lines = []
    if metrics.size:
        size = metrics.size
        ratio = ""
        if baseline and baseline.metrics.size:
            ratio = (
                f" ({size.weights_bytes / baseline.metrics.size.weights_bytes:.2f}× the baseline)"
            )
        lines.append(f"| weights on disk | {size.weights_bytes / 2**20:,.1f} MiB{ratio} |")
        lines.append(f"| resident memory after load | {size.rss_loaded_bytes / 2**20:,.0f} MiB |")
    if metrics.perplexity:
        p = metrics.perplexity
        text = f"{p.perplexity.estimate:.3f} [{p.perplexity.low:.3f}, {p.perplexity.high:.3f}]"
        if p.delta_vs_baseline:
            delta = p.delta_vs_baseline
            text += f"; vs baseline {delta.estimate:+.3f} [{delta.low:+.3f}, {delta.high:+.3f}]"
        lines.append(f"| perplexity ({p.corpus}, {p.n_tokens:,} tokens) | {text} |")
    if metrics.divergence:
        d = metrics.divergence
        lines.append(
            f"| KL(baseline ‖ this), nats/token | mean {d.kl_mean.estimate:.4f} "
            f"[{d.kl_mean.low:.4f}, {d.kl_mean.high:.4f}], p99 {d.kl_p99:.4f} |"
        )
        lines.append(f"| top-1 agreement with baseline | {100 * d.top1_agreement.estimate:.1f}% |")
    if metrics.speed and metrics.speed.points:
        s = metrics.speed
        point = s.points[0]
        where = f"{s.backend} on {s.device}, **{s.execution_mode}**"
        decode = f"{1000 * point.tpot_s.median:.1f} ms/token"
        lines.append(f"| decode, batch {point.batch_size} ({where}) | {decode} |")
    generations = metrics.generations
    if generations is not None and generations.exact_match_rate is not None:
        g = generations
        rate = generations.exact_match_rate
        lines.append(
            f"| greedy generations identical to baseline | {100 * rate:.0f}% of "
            f"{g.n_prompts} prompts (ROUGE-L {g.rouge_l_mean or 0:.3f}) |"
        )
    return lines


def render_card(results: StudyResults, variant: VariantResult) -> str:
    scheme = get_scheme(variant.scheme) if variant.scheme in REGISTRY else None
    base = _base_model(results)
    baseline = find_baseline(results)
    front: dict[str, Any] = {}
    if base:
        front["base_model"] = base
        front["base_model_relation"] = "quantized"
    license_ = _license(results)
    if license_:
        front["license"] = license_
    front |= {
        "library_name": "transformers",
        "pipeline_tag": "text-generation",
        "tags": ["quantbench", "compressed-tensors", variant.scheme],
    }
    title = base or str(results.model.get("spec", "model")).rstrip("/").rsplit("/", 1)[-1]
    own_key = variant.stage_keys.get("calibration")
    calibration = next((c for c in results.calibrations if c.key == own_key), results.calibration)
    made = [f"- scheme: `{variant.scheme}`" + (f": {scheme.description}" if scheme else "")]
    if variant.options:
        made.append(
            "- options used: " + ", ".join(f"`{k}={v}`" for k, v in variant.options.items())
        )
    made += [f"- pre-flight decision: {d}" for d in variant.decisions]
    if variant.needs_calibration and calibration:
        made.append(
            f"- calibration: {calibration.num_samples} samples of up to {calibration.seq_len} "
            f"tokens from `{calibration.source}` (seed {calibration.seed}, "
            f"{calibration.total_tokens:,} tokens)"
            + (
                f", computed in {variant.quantization.compute_dtype}"
                if variant.quantization and variant.quantization.compute_dtype
                else ""
            )
        )
    if scheme is None or scheme.quantizes:
        made.append("- recipe: `recipe.yaml` in this folder (llm-compressor `oneshot`)")
    else:
        made.append("- unquantized: the baseline's weights saved as they are")
    if results.model.get("spec") in BUILTIN_MODELS:
        made.append(f"- baseline note: {BUILTIN_MODELS[str(results.model['spec'])].note}")
    measured = _measured(variant, baseline)
    hardware = scheme.native_hardware if scheme else "see quantbench schemes"
    parts = [
        "---",
        yaml.safe_dump(front, sort_keys=False).strip(),
        "---",
        "",
        f"# {title} · {variant.name}",
        "",
        f"Made by quantbench {results.quantbench_version} on {results.created_at}.",
        "",
        "## How it was made",
        "",
        *made,
        "",
        "## Measured against the baseline",
        "",
    ]
    if measured:
        parts += ["| figure | value [95% CI] |", "|---|---|", *measured, ""]
        if variant.metrics.speed and variant.metrics.speed.execution_mode == "emulated":
            parts += [
                "Speed was measured *emulated* (weights decompressed, activation quantization "
                "simulated): it says nothing about real low-precision kernels.",
                "",
            ]
    else:
        parts += ["Not evaluated in this study.", ""]
    parts += recovery_card(results, variant.name)
    if base is None:
        parts += [
            f"The base model is the local folder `{results.model.get('spec')}`; no hub id "
            "is known for it, so the front matter names no `base_model`.",
            "",
        ]
    parts += [
        "## How to serve it",
        "",
        f"This card lies in the artifact folder (in the study: `artifacts/{variant.name}/`); "
        "from that folder, or from a model repository uploaded from it:",
        "",
        "```bash",
        "vllm serve ./",
        "```",
        "",
        f"Native kernels: {hardware}.",
        "",
        "## How to load it with transformers",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        'model = AutoModelForCausalLM.from_pretrained("./")  # needs compressed-tensors',
        'tokenizer = AutoTokenizer.from_pretrained("./")',
        "```",
        "",
    ]
    return "\n".join(parts)


def write_model_cards(results: StudyResults, study: Path) -> list[Path]:
    """A README.md in every artifact of the study in `study` (at its URL when the output
    folder is one); the local files written. `results` name artifacts relative to `study`;
    an artifact outside the study folder (another study's) is left alone."""

    written = []
    inside = study.resolve()
    for variant in results.variants:
        if variant.status != "ok" or not variant.artifact_path:
            continue
        if is_url(variant.artifact_path):
            remote = RemoteFolder(variant.artifact_path)
            if remote.exists("config.json"):
                remote.write_bytes(render_card(results, variant).encode(), CARD_FILE)
            continue
        folder = study / variant.artifact_path
        if not folder.is_dir() or not folder.resolve().is_relative_to(inside):
            continue
        try:
            write_text_atomic(folder / CARD_FILE, render_card(results, variant))
        except OSError as exc:
            raise UserError(
                f"cannot write the model card in {folder} ({exc.strerror}); make the study "
                "folder writable"
            ) from None
        written.append(folder / CARD_FILE)
    return written
