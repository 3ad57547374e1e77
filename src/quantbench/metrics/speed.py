"""Generation speed through the backend: TTFT, time per output token, end-to-end latency and
output throughput for fixed input/output lengths at several batch sizes.

Warm-up runs are excluded; each figure is the spread of `repeats` runs. Every record names
the execution mode the backend really used: through transformers on CPU a compressed-tensors
variant runs *emulated* (decompressed weights, simulated activation quantization), so its
speed says nothing about real low-precision kernels.
"""

from __future__ import annotations

from typing import Any

from quantbench import stats
from quantbench.config import EvaluationConfig
from quantbench.corpus import builtin_eval_text
from quantbench.metrics.base import EvalContext
from quantbench.process.child import torch_threads
from quantbench.results import SpeedPoint, SpeedRecord, Spread


def _spread(samples: list[float]) -> Spread:
    return stats.spread(samples)


def fixed_prompts(tokenizer: Any, batch_size: int, prompt_tokens: int) -> list[list[int]]:
    """`batch_size` different prompts of exactly `prompt_tokens` real-text tokens."""
    ids = list(tokenizer(builtin_eval_text(), add_special_tokens=False)["input_ids"])
    needed = batch_size * prompt_tokens
    while len(ids) < needed:
        ids = ids + ids
    return [ids[i * prompt_tokens : (i + 1) * prompt_tokens] for i in range(batch_size)]


class SpeedMetric:
    name = "speed"
    version = 1
    needs_model = True
    uses_corpus = False
    own_inputs: tuple[str, ...] = ()
    baseline_inputs: tuple[str, ...] = ()
    reported = True
    timed = True

    def key_config(self, config: EvaluationConfig) -> dict[str, Any]:
        return {**config.speed.model_dump(), "threads": config.threads}

    def compute(self, ctx: EvalContext) -> SpeedRecord:
        backend, load = ctx.backend()
        settings = ctx.config.speed
        tokenizer = backend.tokenizer()
        points = []
        runs_total = len(settings.batch_sizes) * (settings.warmup + settings.repeats)
        runs_done = 0
        for batch_size in settings.batch_sizes:
            prompts = fixed_prompts(tokenizer, batch_size, settings.prompt_tokens)
            ttft, tpot, e2e, throughput = [], [], [], []
            itl: list[float] = []
            for run in range(settings.warmup + settings.repeats):
                timing = backend.timed_generate(prompts, settings.output_tokens)
                runs_done += 1
                ctx.progress(f"speed b={batch_size}", runs_done, runs_total)
                if run < settings.warmup:
                    continue
                ttft.append(timing.ttft_s)
                tpot.append(timing.decode_s_per_token)
                e2e.append(timing.total_s)
                throughput.append(batch_size * timing.new_tokens_per_sequence / timing.total_s)
                itl.extend(timing.inter_token_s)
            points.append(
                SpeedPoint(
                    batch_size=batch_size,
                    prompt_tokens=settings.prompt_tokens,
                    output_tokens=settings.output_tokens,
                    ttft_s=_spread(ttft),
                    tpot_s=_spread(tpot),
                    e2e_s=_spread(e2e),
                    throughput_tok_s=_spread(throughput),
                    itl_s=_spread(itl) if itl else None,
                )
            )
        texts = list(getattr(backend, "last_texts", None) or [])
        return SpeedRecord(
            backend=ctx.backend_name,
            execution_mode=load.execution_mode,
            detail=load.detail,
            device=load.device,
            threads=torch_threads(),
            ran_alone=ctx.alone,
            warmup=settings.warmup,
            repeats=settings.repeats,
            points=points,
            startup_s=load.load_s,
            kernels=list(getattr(backend, "kernels", None) or []),
            thread_binding=getattr(backend, "thread_binding", None),
            sample_output=texts[0] if texts else None,
        )
