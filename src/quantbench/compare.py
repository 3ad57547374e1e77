"""Put the variants of several finished studies into one report.

Only saved results are read. Metrics are compared only where they are comparable: perplexity
and divergence need the same evaluated tokens (same corpus, windows and tokenizer, checked by
the hash of the token ids), generations need the same prompt suite. Metrics that are not
comparable are left out of the merged report, and a note says which and why.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path

from quantbench import __version__
from quantbench.errors import UserError
from quantbench.remote import is_url
from quantbench.results import StudyResults, VariantResult
from quantbench.study_files import load_results


def _labels(outs: list[str]) -> list[str]:
    labels: list[str] = []
    for out in outs:
        label = (
            out.rstrip("/").rsplit("/", 1)[-1] if is_url(out) else Path(out).resolve().name
        ) or out
        while label in labels:
            label += "'"
        labels.append(label)
    return labels


def _tokens_sha256(study: StudyResults) -> str | None:
    """The hash of the token ids a study scored (the same for all its variants)."""
    records = (v.metrics.perplexity for v in study.variants if v.metrics.perplexity)
    return next((r.tokens_sha256 for r in records), None)


def _distinct(values: list[str | None]) -> bool:
    present = {v for v in values if v is not None}
    return len(present) > 1


_TASK_SETTINGS = ("items_per_subtask", "num_fewshot", "apply_chat_template", "max_gen_tokens")


def _incomparable_tasks(studies: list[StudyResults]) -> set[str]:
    """Tasks whose items or settings differ between studies (accuracies would not match)."""
    seen: dict[str, set[str]] = {}
    for study in studies:
        for variant in study.variants:
            for name, record in variant.metrics.tasks.items():
                settings = {k: record.settings.get(k) for k in _TASK_SETTINGS}
                signature = repr((record.metric, record.filter, sorted(settings.items())))
                seen.setdefault(name, set()).add(signature)
    return {name for name, signatures in seen.items() if len(signatures) > 1}


def compare_studies(outs: list[str]) -> StudyResults:
    if len(outs) < 2:
        raise UserError("compare needs at least two study folders")
    studies = [load_results(out) for out in outs]
    labels = _labels(outs)
    notes: list[str] = []
    token_hashes = [_tokens_sha256(s) for s in studies]
    prompt_hashes = [
        next(
            (v.metrics.generations.suite_sha256 for v in s.variants if v.metrics.generations), None
        )
        for s in studies
    ]
    drop: set[str] = set()
    if _distinct(token_hashes):
        drop |= {"perplexity", "divergence"}
        notes.append(
            "perplexity and divergence are not compared: the studies scored different tokens "
            "(another corpus, window setting or tokenizer)"
        )
    if _distinct(prompt_hashes):
        drop.add("generations")
        notes.append("generations are not compared: the studies used different prompt suites")
    speed_settings = {
        (v.metrics.speed.backend, v.metrics.speed.device)
        for s in studies
        for v in s.variants
        if v.metrics.speed
    }
    if len(speed_settings) > 1:
        notes.append(
            "speed was measured with different backends or devices: "
            + ", ".join(f"{b} on {d}" for b, d in sorted(speed_settings))
        )
    drop_tasks = _incomparable_tasks(studies)
    if drop_tasks:
        notes.append(
            f"task(s) {', '.join(sorted(drop_tasks))} are not compared: the studies ran "
            "different items or settings (limit, few-shot, chat template, generation cap)"
        )
    variants: list[VariantResult] = []
    for label, study in zip(labels, studies, strict=True):
        for variant in study.variants:
            tasks = {k: v for k, v in variant.metrics.tasks.items() if k not in drop_tasks}
            metrics = variant.metrics.model_copy(
                update={**{name: None for name in drop}, "tasks": tasks}
            )
            variants.append(
                variant.model_copy(
                    update={
                        "name": f"{label}/{variant.name}",
                        "study": _joined(label, variant.study),
                        "metrics": metrics,
                    }
                )
            )
    specs = list(dict.fromkeys(str(s.model.get("spec")) for s in studies))
    return StudyResults(
        quantbench_version=__version__,
        created_at=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        model={"spec": " vs ".join(specs), "compared": [str(o) for o in outs]},
        config={"compare": [str(o) for o in outs]},
        variants=variants,
        provenance={
            "compared_studies": [
                {
                    "path": str(out),
                    "label": label,
                    "created_at": s.created_at,
                    "provenance": s.provenance,
                }
                for out, label, s in zip(outs, labels, studies, strict=True)
            ]
        },
        notes=notes,
    )


def _joined(label: str, study: str) -> str:
    """The study of a variant merged under `label` (compared studies of several models nest:
    `<study>/<model>`)."""
    return f"{label}/{study}" if study else label


def merge_model_studies(
    labels: list[str], studies: list[StudyResults], config: dict[str, object]
) -> StudyResults:
    """One results record for a study of several models (each a study of its own).

    Variants are named `<model label>/<variant>` and gain the axis `model`. Every delta
    (Δppl, KL, top-1, task accuracy) stays the one computed against the variant's own
    model's baseline, so all metrics are kept; absolute perplexities are comparable across
    models only when they scored the same tokens, which a note says when they did not."""
    variants = [
        variant.model_copy(
            update={
                "name": f"{label}/{variant.name}",
                "study": _joined(label, variant.study),
                "axes": {"model": label, **variant.axes},
            }
        )
        for label, study in zip(labels, studies, strict=True)
        for variant in study.variants
    ]
    token_hashes = [_tokens_sha256(s) for s in studies]
    notes = [
        f"{label}: {note}" for label, s in zip(labels, studies, strict=True) for note in s.notes
    ]
    if _distinct(token_hashes):
        notes.append(
            "the models scored different tokens (tokenizers differ): compare each variant's "
            "Δppl and KL against its own model's baseline, not absolute perplexities across models"
        )
    return StudyResults(
        quantbench_version=__version__,
        created_at=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        model={
            "spec": " + ".join(str(s.model.get("spec")) for s in studies),
            "models": {label: s.model for label, s in zip(labels, studies, strict=True)},
        },
        config=config,
        calibrations=[c for s in studies for c in s.calibrations],
        variants=variants,
        provenance={
            "model_studies": [
                {"label": label, "created_at": s.created_at, "provenance": s.provenance}
                for label, s in zip(labels, studies, strict=True)
            ]
        },
        notes=notes,
    )
