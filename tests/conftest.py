"""Shared fixtures: a tiny random Llama built offline, an isolated cache, no hub access."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


USER_CACHE = os.environ.get("QUANTBENCH_CACHE_DIR")
"""The user's cache folder before the tests isolate theirs (the vLLM env lives there)."""


@pytest.fixture(autouse=True, scope="session")
def _offline_and_isolated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Tests never reach a hub, and never touch the user's real cache."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    if "QUANTBENCH_TEST_REAL_CACHE" not in os.environ:
        os.environ["QUANTBENCH_CACHE_DIR"] = str(tmp_path_factory.mktemp("qb-cache"))
    yield


def build_tiny_model(dest: Path, hidden_size: int = 96, vocab_target: int = 400) -> Path:
    """A 2-layer random Llama with a BPE tokenizer trained on CPython's help text.

    hidden_size 96 is deliberately not a multiple of 64, so group-size pre-flight has work.
    """
    from pydoc_data.topics import topics

    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tokenizer = Tokenizer(models.BPE(unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_target,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    texts = [topics[k] for k in sorted(topics)[:40]]
    tokenizer.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<|endoftext|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
    )
    fast.chat_template = CHATML
    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(dest)
    fast.save_pretrained(dest)
    return dest


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def tiny_study_yaml(
    path: Path,
    model: Path,
    out: Path,
    schemes: list[object],
    evaluation: dict[str, object] | None = None,
    calibration: dict[str, object] | None = None,
) -> Path:
    """A study file for the tiny model with a small calibration budget (no evaluation unless
    `evaluation` is given: the spine's tests stay fast)."""
    import yaml

    study = {
        "model": str(model),
        "schemes": schemes,
        "calibration": {"num_samples": 8, "seq_len": 64, **(calibration or {})},
        "evaluation": evaluation or {"metrics": []},
        "out": str(out),
    }
    path.write_text(yaml.safe_dump(study))
    return path


def run_cli(
    *args: str, cwd: Path | None = None, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """Run `python -m quantbench ARGS` as a user would, capturing output."""
    return subprocess.run(
        [sys.executable, "-m", "quantbench", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=timeout,
        env={**os.environ, "COLUMNS": "200"},
    )


def read_json(path: Path) -> dict[str, object]:
    data: dict[str, object] = json.loads(path.read_text())
    return data


VOCAB = 400  # the tiny tokenizer's size: top_k = vocab makes the stored reference exact


@pytest.fixture(scope="session")
def evaluated(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished study with every metric on the tiny model (about a minute, shared)."""
    import yaml

    root = tmp_path_factory.mktemp("eval")
    study = {
        "model": str(tiny_model),
        "schemes": ["bf16", "fp8-dynamic", {"scheme": "w4a16-gptq", "group_size": 32}],
        "calibration": {"num_samples": 8, "seq_len": 64},
        "evaluation": {
            "corpus": {
                "window": 64,
                "stride": 48,
                "max_tokens": 400,
                "top_k": VOCAB,
                "exact_check_tokens": 40,
            },
            "speed": {"prompt_tokens": 8, "output_tokens": 4, "batch_sizes": [1, 2], "repeats": 5},
            "generations": {"max_new_tokens": 8},
        },
        "out": str(root / "out"),
    }
    (root / "study.yaml").write_text(yaml.safe_dump(study))
    result = run_cli("run", "--config", str(root / "study.yaml"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "emulated" in result.stdout
    # This run's schedule, before a test's rerun replaces results.json with its own.
    shutil.copy(root / "out" / "results.json", root / "first-run-results.json")
    return root


def process_gone(pid: int, timeout_s: float) -> bool:
    """True once `pid` has exited within `timeout_s` (a zombie nobody reaps counts as gone)."""
    import time

    import psutil

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


LONGEST_FILES_FIRST = (
    "test_e2e_builtin.py",
    "test_faults.py",
    "test_matrix.py",
    "test_study.py",
    "test_ray.py",
    "test_remote.py",
    "test_tasks.py",
    "test_evaluate.py",
    "test_damaged_study.py",
    "test_backend_hf.py",
)
"""Files with the longest runs (minutes each on 2 cores), started first: CI runs the files in
two pytest-xdist processes, which take files in collection order, so a long file left to the
end would run alone while the other process idles. test_vllm.py stays last: its test waits
for the vLLM environment that CI builds while the suite runs."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        name = item.path.name
        if name == "test_vllm.py":
            return len(LONGEST_FILES_FIRST) + 1
        if name in LONGEST_FILES_FIRST:
            return LONGEST_FILES_FIRST.index(name)
        return len(LONGEST_FILES_FIRST)

    items.sort(key=rank)  # stable: each file's own order is kept
