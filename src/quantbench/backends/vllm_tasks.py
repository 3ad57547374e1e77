"""lm-eval's model interface over the vllm backend's worker: task requests cross to vLLM.

lm-eval's own `vllm` model imports vLLM, which quantbench's environment never does, so this
is the same model split in two: everything lm-eval decides (prompts, the chat template,
tokenization, truncation, stop sequences, the post-hoc cut) happens here, with lm-eval's own
helpers and the artifact's tokenizer, and only token ids cross to the worker, which runs
them through vLLM's scheduler (`complete`: greedy continuations; `loglikelihood`: prompt
log-probs of a continuation and whether it is the greedy one). Tokenization follows
lm-eval's transformers model (`HFLM`), so both backends send a variant the same tokens
whenever a prompt fits both contexts (vLLM's `max_model_len` is usually the shorter; a cut
prompt is counted in `truncated`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

CompleteCall = Callable[[list[list[int]], list[dict[str, Any]]], list[str]]
"""Token prompts and their sampling settings → the generated texts, in order."""
LoglikelihoodCall = Callable[[list[list[int]], list[int]], list[tuple[float, bool]]]
"""Token sequences and their context lengths → (continuation log-prob, greedy), in order."""

DEFAULT_MAX_GEN_TOKS = 256
"""What lm-eval's models generate at most when a task sets no `max_gen_toks`."""


def vllm_task_model(
    tokenizer: Any,
    complete: CompleteCall,
    loglikelihood: LoglikelihoodCall,
    max_length: int,
    batch: int,
    progress: Callable[[str, int, int], None],
) -> Any:
    """An lm-eval `LM` whose model calls run in the vllm backend's worker (lm-eval is
    imported here, when a task stage asks for one)."""
    from lm_eval.api.model import TemplateLM
    from lm_eval.models.utils import (
        _add_special_kwargs,
        handle_stop_sequences,
        has_bos_prefix,
        normalize_gen_kwargs,
        postprocess_generated_text,
    )

    class VLLMTaskModel(TemplateLM):  # type: ignore[misc]
        """An lm-eval `LM` whose model calls run in the vllm backend's worker.

        `max_length` is the engine's `max_model_len`: contexts are cut on the left to leave room
        for the tokens to generate, as lm-eval's models cut them. Requests go to the worker
        `batch` at a time (vLLM batches each call with its own scheduler), longest first, with
        `progress(phase, done, total)` after each call. It closes over `vllm_task_model`'s
        arguments, so it is built once, here, and takes none itself."""

        def __init__(self) -> None:
            super().__init__()
            self.tokenizer = tokenizer
            self.truncated = 0
            """Requests whose context was cut on the left to fit `max_length` (recorded)."""

        # -- what lm-eval asks of a model ---------------------------------------------------

        @property
        def eot_token_id(self) -> int:
            return int(self.tokenizer.eos_token_id)

        @property
        def prefix_token_id(self) -> int:
            bos = self.tokenizer.bos_token_id
            return int(bos if bos is not None else self.tokenizer.eos_token_id)

        @property
        def max_length(self) -> int:
            return max_length

        @property
        def tokenizer_name(self) -> str:
            return str(self.tokenizer.name_or_path).replace("/", "__")

        def apply_chat_template(
            self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True
        ) -> str:
            """As `HFLM.apply_chat_template`: a template that refuses a system message
            (lm-eval puts a task's description there) gets the conversation without it."""
            import jinja2

            def render(history: list[dict[str, str]]) -> str:
                return str(
                    self.tokenizer.apply_chat_template(
                        history,
                        tokenize=False,
                        add_generation_prompt=add_generation_prompt,
                        continue_final_message=not add_generation_prompt,
                    )
                )

            try:
                return render(chat_history)
            except jinja2.exceptions.TemplateError:
                return render([m for m in chat_history if m["role"] != "system"])

        def tok_encode(
            self, string: str, add_special_tokens: bool | None = None, **kwargs: Any
        ) -> list[int]:
            """As `HFLM.tok_encode`: the tokenizer's own special tokens, none when the text
            already starts with the prefix token (a chat template writes it)."""
            special = _add_special_kwargs(add_special_tokens, None)
            if add_special_tokens is None and has_bos_prefix(
                string, self.tokenizer.decode(self.prefix_token_id)
            ):
                special["add_special_tokens"] = False
            return list(self.tokenizer.encode(string, **special))

        def tok_decode(self, tokens: Sequence[int], skip_special_tokens: bool = True) -> str:
            return str(self.tokenizer.decode(list(tokens), skip_special_tokens=skip_special_tokens))

        def _loglikelihood_tokens(
            self, requests: list[Any], disable_tqdm: bool = False, **kwargs: Any
        ) -> list[tuple[float, bool]]:
            """(context, continuation) token pairs: the continuation's summed log-prob and
            whether greedy decoding would have produced it, the context cut on the left so the
            whole fits with the one token vLLM must generate."""
            room = max_length - 1
            sequences, context_lengths = [], []
            for _, context, continuation in requests:
                if len(continuation) >= room:
                    raise ValueError(
                        f"a continuation of {len(continuation)} tokens does not fit vLLM's "
                        f"context of {max_length}: raise evaluation.vllm.max_model_len"
                    )
                whole = list(context) + list(continuation)
                if len(whole) > room:
                    self.truncated += 1
                    whole = whole[-room:]
                sequences.append(whole)
                context_lengths.append(len(whole) - len(continuation))
            order = sorted(range(len(requests)), key=lambda i: -len(sequences[i]))
            results: list[tuple[float, bool]] = [(0.0, False)] * len(requests)
            for start in range(0, len(order), batch):
                chosen = order[start : start + batch]
                answers = loglikelihood(
                    [sequences[i] for i in chosen], [context_lengths[i] for i in chosen]
                )
                for index, answer in zip(chosen, answers, strict=True):
                    results[index] = answer
                progress("scoring", min(start + batch, len(order)), len(order))
            return results

        def loglikelihood_rolling(
            self, requests: list[Any], disable_tqdm: bool = False
        ) -> list[float]:
            raise NotImplementedError(
                "whole-document log-likelihood tasks (wikitext) run through the hf backend; "
                "quantbench's perplexity metric measures the same through vLLM"
            )

        def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
            """Greedy continuations with each request's stop sequences and token cap; the text
            is cut at the first stop sequence afterwards too, as lm-eval's models cut it."""
            eos = self.tok_decode([self.eot_token_id], skip_special_tokens=False)
            prompts: list[list[int]] = []
            params: list[dict[str, Any]] = []
            stops: list[list[str]] = []
            for request in requests:
                context, gen_kwargs = request.args
                kwargs = normalize_gen_kwargs(
                    dict(gen_kwargs), default_max_gen_toks=DEFAULT_MAX_GEN_TOKS
                )
                until = handle_stop_sequences(kwargs.pop("until", None), eos=eos)
                max_tokens = int(kwargs.pop("max_gen_toks", DEFAULT_MAX_GEN_TOKS))
                if max_tokens >= max_length:
                    raise ValueError(
                        f"the task generates up to {max_tokens} tokens, which leaves no room "
                        f"for its prompt in vLLM's context of {max_length}: raise "
                        "evaluation.vllm.max_model_len or lower --max-gen-tokens"
                    )
                room = max_length - max_tokens
                tokens = self.tok_encode(context)
                if len(tokens) > room:
                    self.truncated += 1
                    tokens = tokens[-room:]
                prompts.append(tokens)
                stops.append(until)
                params.append(
                    {
                        "max_tokens": max_tokens,
                        "stop": until,
                        "temperature": float(kwargs.get("temperature") or 0.0),
                    }
                )
            order = sorted(range(len(requests)), key=lambda i: -len(prompts[i]))
            texts: list[str] = [""] * len(requests)
            for start in range(0, len(order), batch):
                chosen = order[start : start + batch]
                outputs = complete([prompts[i] for i in chosen], [params[i] for i in chosen])
                for index, text in zip(chosen, outputs, strict=True):
                    texts[index] = postprocess_generated_text(text, stops[index], None)
                progress("generating", min(start + batch, len(order)), len(order))
            return texts

    return VLLMTaskModel()
