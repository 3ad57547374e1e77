"""Greedy generations for a fixed prompt suite, each variant's beside the baseline's.

The built-in suite (`quantbench/data/prompts.jsonl`, 48 prompts written for this project:
facts, reasoning, format-constrained instructions, code, summarization, multilingual) is
rendered with the model's chat template. Similarity is measured on token ids (exact match,
ROUGE-L F1, first differing token), which is language-neutral. Greedy outputs part for
reasons other than quantization too (BF16 and FP32 runs of one model part after 11–13 tokens
on some prompts), so read first-difference figures as a distribution, not per prompt.
"""

from __future__ import annotations

import hashlib
import json
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np

from quantbench import stats
from quantbench.config import EvaluationConfig
from quantbench.errors import UserError
from quantbench.metrics.base import EvalContext
from quantbench.results import GenerationItem, GenerationsRecord

OUTPUTS_FILE = "generations.json"


def load_prompts(source: str) -> tuple[list[dict[str, Any]], str]:
    """Prompt rows ({id, category, messages}) and the hash of their file."""
    if source == "builtin":
        text = files("quantbench").joinpath("data/prompts.jsonl").read_text()
        where = "built-in prompts"
    else:
        path = Path(source).expanduser()
        if not path.is_file():
            raise UserError(f"prompt file not found: {source}")
        text = path.read_text()
        where = str(path)
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{where}:{number}: not valid JSON ({exc.msg})") from None
        if isinstance(row, dict) and "prompt" in row and "messages" not in row:
            row["messages"] = [{"role": "user", "content": str(row["prompt"])}]
        if not isinstance(row, dict) or not isinstance(row.get("messages"), list):
            raise UserError(f"{where}:{number}: a prompt row needs 'messages' or 'prompt'")
        row.setdefault("id", f"prompt-{number:03d}")
        row.setdefault("category", "custom")
        rows.append(row)
    if not rows:
        raise UserError(f"{where} has no prompts")
    return rows, hashlib.sha256(text.encode()).hexdigest()


def render(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    text = "\n\n".join(m["content"] for m in messages)
    return list(tokenizer(text, add_special_tokens=True)["input_ids"])


class GenerationsMetric:
    name = "generations"
    version = 1
    needs_model = True
    uses_corpus = False
    own_inputs: tuple[str, ...] = ()
    baseline_inputs: tuple[str, ...] = ("generations",)
    reported = True
    timed = False

    def key_config(self, config: EvaluationConfig) -> dict[str, Any]:
        settings = config.generations
        _, digest = load_prompts(settings.prompts)
        return {"prompts_sha256": digest, "max_new_tokens": settings.max_new_tokens}

    def compute(self, ctx: EvalContext) -> GenerationsRecord:
        settings = ctx.config.generations
        rows, digest = load_prompts(settings.prompts)
        backend, _ = ctx.backend()
        tokenizer = backend.tokenizer()
        prompts = [render(tokenizer, row["messages"]) for row in rows]
        outputs = []
        for start in range(0, len(prompts), settings.batch_size):
            chunk = prompts[start : start + settings.batch_size]
            outputs += backend.generate(chunk, settings.max_new_tokens, batch_size=len(chunk))
            ctx.progress("generating", len(outputs), len(prompts))
        saved = [
            {
                "id": row["id"],
                "category": row["category"],
                "token_ids": out.token_ids,
                "text": out.text,
            }
            for row, out in zip(rows, outputs, strict=True)
        ]
        (ctx.work / OUTPUTS_FILE).write_text(json.dumps(saved, ensure_ascii=False, indent=1))
        reference_dir = ctx.work if ctx.is_baseline else ctx.baseline["generations"]
        reference = {
            item["id"]: item["token_ids"]
            for item in json.loads((reference_dir / OUTPUTS_FILE).read_text())
        }
        items = []
        for row, item in zip(rows, saved, strict=True):
            base_ids = reference.get(item["id"])
            prompt_text = next(
                (m["content"] for m in reversed(row["messages"]) if m["role"] == "user"), None
            )
            items.append(
                GenerationItem(
                    id=item["id"],
                    category=item["category"],
                    prompt=prompt_text,
                    text=item["text"],
                    n_tokens=len(item["token_ids"]),
                    exact_match=None if base_ids is None else item["token_ids"] == base_ids,
                    rouge_l=None
                    if base_ids is None
                    else stats.rouge_l_f1(item["token_ids"], base_ids),
                    first_diff=None
                    if base_ids is None
                    else stats.first_difference(item["token_ids"], base_ids),
                )
            )
        compared = [i for i in items if i.exact_match is not None]
        diffs = [i.first_diff for i in compared if i.first_diff is not None]
        return GenerationsRecord(
            suite=settings.prompts,
            suite_sha256=digest,
            max_new_tokens=settings.max_new_tokens,
            n_prompts=len(items),
            exact_match_rate=float(np.mean([bool(i.exact_match) for i in compared]))
            if compared
            else None,
            rouge_l_mean=float(np.mean([i.rouge_l or 0.0 for i in compared])) if compared else None,
            first_diff_median=float(np.median(diffs)) if diffs else None,
            items=items,
        )
