"""Provenance, model cards, the recommendation through the CLI, and comparing studies."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from conftest import run_cli
from quantbench import provenance
from quantbench.study_files import load_results

EXTERNAL_REFERENCE = r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//|url\(\s*["']?https?:"""


def test_cpu_flags_are_read_from_cpuinfo(tmp_path: Path) -> None:
    fake = tmp_path / "cpuinfo"
    fake.write_text("processor\t: 0\nmodel name\t: Test CPU 9000\nflags\t\t: fpu avx2 amx_tile\n")
    info = provenance.cpu_info(fake)
    assert info["model"] == "Test CPU 9000"
    assert info["flags"] == {flag: flag in ("avx2", "amx_tile") for flag in provenance.CPU_FLAGS}
    assert {"amx_tile", "avx2", "avx512f"} <= set(provenance.CPU_FLAGS)


def test_results_carry_the_provenance_block(evaluated: Path) -> None:
    block = load_results(evaluated / "out").provenance
    assert block["quantbench"]["version"]
    assert block["libraries"]["torch"].startswith("2.13")
    assert block["libraries"]["llmcompressor"] and block["libraries"]["compressed-tensors"]
    # Every tracked flag is a key (true or false), so `"amx_tile" in flags` held on a CPU
    # without AMX: the values must be this machine's, and the report lists only true ones.
    assert block["cpu"]["flags"] == provenance.cpu_info()["flags"]
    assert set(block["cpu"]["flags"]) == set(provenance.CPU_FLAGS)
    assert block["seeds"] == {"calibration": 0, "bootstrap": 0}
    assert block["model"]["files"]["model.safetensors"]
    assert len(block["inputs"]["calibration"]["samples_sha256"]) == 64
    assert len(block["inputs"]["corpus"]["tokens_sha256"]) == 64
    assert block["inputs"]["prompts"][0]["suite"] == "builtin"
    assert block["config"]["evaluation"]["corpus"]["window"] == 64
    report = (evaluated / "out" / "report.md").read_text()
    assert "## Provenance" in report and "torch 2.13" in report
    flags_line = re.search(r"flags: (.*?); Python", report)
    assert flags_line, report
    shown = set(flags_line.group(1).split(", ")) - {"none of note"}
    assert shown == {flag for flag, on in block["cpu"]["flags"].items() if on}


def test_every_artifact_has_a_model_card_with_measured_numbers(evaluated: Path) -> None:
    results = load_results(evaluated / "out")
    for variant in results.variants:
        card = (Path(variant.artifact_path or "") / "README.md").read_text()
        front = yaml.safe_load(card.split("---")[1])
        assert "quantbench" in front["tags"] and variant.scheme in front["tags"]
        assert "## Measured against the baseline" in card
        perplexity = variant.metrics.perplexity
        assert perplexity and f"{perplexity.perplexity.estimate:.3f}" in card
        assert "vllm serve" in card
        if variant.needs_calibration:
            assert variant.quantization and variant.quantization.compute_dtype
            assert f"computed in {variant.quantization.compute_dtype}" in card
    assert any(v.needs_calibration for v in results.variants)
    fp8_card = (Path(results.variant("fp8-dynamic").artifact_path or "") / "README.md").read_text()
    assert "emulated" in fp8_card and "compute capability ≥ 8.9" in fp8_card


def test_max_kl_zero_leaves_only_the_baseline(evaluated: Path) -> None:
    out = evaluated / "out"
    result = run_cli("report", str(out), "--max-kl", "0")
    assert result.returncode == 0, result.stderr
    recommendation = load_results(out).recommendation
    assert recommendation and recommendation.constraints.max_kl == 0
    assert "only the baseline" in recommendation.summary
    report = (out / "report.md").read_text()
    assert "## Recommendation" in report and "only the baseline" in report
    html = (out / "report.html").read_text()
    assert "only the baseline" in html
    external = re.findall(EXTERNAL_REFERENCE, html)
    assert not external, external
    relaxed = run_cli("report", str(out))
    assert relaxed.returncode == 0


def test_compare_two_studies_refuses_incomparable_metrics(
    evaluated: Path, tiny_model: Path, tmp_path: Path
) -> None:
    other = {
        "model": str(tiny_model),
        "schemes": ["bf16"],
        "evaluation": {
            "metrics": ["perplexity", "size"],
            "corpus": {"window": 32, "stride": 32, "max_tokens": 128, "top_k": 16},
        },
        "out": str(tmp_path / "other"),
    }
    (tmp_path / "other.yaml").write_text(yaml.safe_dump(other))
    assert run_cli("run", "--config", str(tmp_path / "other.yaml")).returncode == 0
    merged_dir = tmp_path / "merged"
    result = run_cli(
        "compare", str(evaluated / "out"), str(tmp_path / "other"), "--out", str(merged_dir)
    )
    assert result.returncode == 0, result.stderr
    assert "perplexity and divergence are not compared" in result.stdout
    merged = load_results(merged_dir)
    names = [v.name for v in merged.variants]
    assert names[:1] == ["out/bf16"] and names[-1] == "other/bf16"
    assert all(v.metrics.perplexity is None for v in merged.variants)
    assert all(v.metrics.size is not None for v in merged.variants)
    assert merged.notes and (merged_dir / "report.html").is_file()
    data = json.loads((merged_dir / "results.json").read_text())
    assert len(data["provenance"]["compared_studies"]) == 2
    assert run_cli("compare", str(evaluated / "out")).returncode == 2
