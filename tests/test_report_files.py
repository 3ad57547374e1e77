"""CSV and Markdown reports built from a hand-made `StudyResults` (no models, milliseconds)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from quantbench.report.csv_table import csv_header, render_csv, write_csv
from quantbench.report.headline import HEADLINE_COLUMNS, headline_rows
from quantbench.report.markdown import (
    escape_cell,
    render_markdown,
    write_markdown,
)
from quantbench.results import (
    DivergenceRecord,
    GenerationItem,
    GenerationsRecord,
    Interval,
    QuantizationRecord,
    SpeedPoint,
    SpeedRecord,
    StudyResults,
    VariantMetrics,
    VariantResult,
    find_baseline,
)
from records import MIB
from records import perplexity_record as _perplexity
from records import size_record as _size
from records import spread as _spread


def _speed(mode: str, tpot_s: float) -> SpeedRecord:
    points = [
        SpeedPoint(
            batch_size=batch,
            prompt_tokens=64,
            output_tokens=32,
            ttft_s=_spread(0.02 * batch),
            tpot_s=_spread(tpot_s),
            e2e_s=_spread(1.0),
            throughput_tok_s=_spread(25.0 * batch),
        )
        for batch in (1, 8)
    ]
    return SpeedRecord(
        backend="hf",
        execution_mode=mode,  # type: ignore[arg-type]
        detail="transformers on CPU",
        device="cpu",
        threads=8,
        warmup=1,
        repeats=5,
        points=points,
    )


def _generations(texts: list[str], baseline: bool) -> GenerationsRecord:
    categories = ["chat", "chat", "chat", "chat", "code"]
    items = [
        GenerationItem(
            id=f"p{i}",
            category=cat,
            text=text,
            n_tokens=10,
            exact_match=None if baseline else i % 2 == 0,
            rouge_l=None if baseline else 0.75,
            first_diff=None if baseline or i % 2 == 0 else 3,
        )
        for i, (cat, text) in enumerate(zip(categories, texts, strict=True))
    ]
    return GenerationsRecord(
        suite="builtin",
        suite_sha256="1" * 64,
        max_new_tokens=64,
        n_prompts=len(items),
        exact_match_rate=None if baseline else 0.6,
        rouge_l_mean=None if baseline else 0.75,
        items=items,
    )


def _results() -> StudyResults:
    base_texts = ["Hello there.", "a | b\nc", "Third.", "Fourth (not shown).", "def f(): pass"]
    baseline = VariantResult(
        name="bf16",
        scheme="bf16",
        status="ok",
        disk_bytes=256 * MIB,
        quantization=QuantizationRecord(wall_s=3.0, peak_rss_bytes=600 * MIB),
        metrics=VariantMetrics(
            size=_size(256),
            perplexity=_perplexity(15.0, None),
            speed=_speed("native", 0.0200),
            generations=_generations(base_texts, baseline=True),
        ),
    )
    emulated = VariantResult(
        name="w8a8-int8",
        scheme="w8a8-int8",
        status="ok",
        options={"smoothing_strength": 0.8},
        options_requested={},
        decisions=["group size 128 does not divide 96: used 32"],
        disk_bytes=128 * MIB,
        quantization=QuantizationRecord(wall_s=42.5, peak_rss_bytes=900 * MIB),
        metrics=VariantMetrics(
            size=_size(128),
            perplexity=_perplexity(15.12, Interval(estimate=0.12, low=0.05, high=0.2)),
            divergence=DivergenceRecord(
                n_tokens=16352,
                top_k=256,
                kl_mean=Interval(estimate=0.0123, low=0.011, high=0.0136),
                kl_median=0.004,
                kl_p99=0.15,
                kl_max=1.2,
                top1_agreement=Interval(estimate=0.973, low=0.969, high=0.977),
                ref_prob_delta={"mean": -0.002, "p1": -0.1, "p50": 0.0, "p99": 0.08},
                approximation={
                    "check_tokens": 128,
                    "kl_mean_exact": 0.0124,
                    "kl_mean_approx": 0.0123,
                    "max_abs_error": 0.0004,
                },
            ),
            speed=_speed("emulated", 0.0418),
            generations=_generations([*base_texts[:4], "def g(): pass"], baseline=False),
        ),
    )
    missing = VariantResult(
        name="w4a16-gptq",
        scheme="w4a16-gptq",
        status="ok",
        disk_bytes=80 * MIB,
        metrics=VariantMetrics(errors={"perplexity": "out of memory | retry\nwith fewer windows"}),
    )
    return StudyResults(
        quantbench_version="0.1.0",
        created_at="2025-01-01T00:00:00+00:00",
        model={"spec": "smollm2-135m-instruct"},
        config={},
        variants=[baseline, emulated, missing],
    )


@pytest.fixture(scope="module")
def results() -> StudyResults:
    return _results()


def test_headline_rows_figures_and_deltas(results: StudyResults) -> None:
    rows = {row.name: row for row in headline_rows(results)}
    assert [r.is_baseline for r in rows.values()] == [True, False, False]
    assert rows["bf16"].cell("size_ratio").value == pytest.approx(1.0)
    assert rows["w8a8-int8"].cell("size_ratio").value == pytest.approx(0.5)
    assert rows["w4a16-gptq"].text("weights") == "80.0"
    assert rows["w8a8-int8"].text("ppl_delta") == "+0.12 [+0.05, +0.20]"
    assert rows["w8a8-int8"].text("decode_b1") == "41.8 ms (emulated)"
    assert rows["w8a8-int8"].text("throughput") == "200.0 tok/s @ batch 8 (emulated)"
    assert rows["w8a8-int8"].text("top1") == "97.3 [96.9, 97.7]"
    missing = rows["w4a16-gptq"]
    assert missing.text("status") == "ok; failed: perplexity"
    for key in ("ppl", "ppl_delta", "kl_mean", "decode_b1", "rss_loaded", "rouge_l"):
        assert missing.text(key) == ""


def test_no_baseline_means_no_ratios(results: StudyResults) -> None:
    without = results.model_copy(update={"variants": results.variants[1:]})
    assert find_baseline(without) is None
    assert all(row.cell("size_ratio").missing for row in headline_rows(without))


def test_csv_one_row_per_variant_in_base_units(results: StudyResults, tmp_path: Path) -> None:
    path = tmp_path / "out" / "headline.csv"
    write_csv(results, path)
    assert [p.name for p in path.parent.iterdir()] == ["headline.csv"]
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        assert reader.fieldnames == csv_header()
        rows = list(reader)
    assert [r["variant"] for r in rows] == ["bf16", "w8a8-int8", "w4a16-gptq"]
    base, emulated, missing = rows
    assert base["is_baseline"] == "1" and emulated["is_baseline"] == "0"
    assert int(emulated["weights_bytes"]) == 128 * MIB
    assert float(emulated["size_ratio"]) == pytest.approx(0.5)
    assert float(emulated["ppl"]) == pytest.approx(15.12)
    assert float(emulated["ppl_ci_low"]) == pytest.approx(14.82)
    assert float(emulated["ppl_delta_ci_high"]) == pytest.approx(0.2)
    assert float(emulated["kl_mean"]) == pytest.approx(0.0123)
    assert float(emulated["decode_tpot_s_b1"]) == pytest.approx(0.0418)
    assert int(emulated["throughput_batch_size"]) == 8
    assert emulated["speed_execution_mode"] == "emulated"
    assert base["speed_execution_mode"] == "native"
    assert base["ppl_delta"] == "" and base["kl_mean"] == ""
    assert missing["ppl"] == "" and missing["rss_loaded_bytes"] == ""
    assert missing["failed_metrics"] == "perplexity"
    assert int(missing["weights_bytes"]) == 80 * MIB


def test_csv_has_every_column_field(results: StudyResults) -> None:
    header = render_csv(results).splitlines()[0].split(",")
    expected = {name for col in HEADLINE_COLUMNS for name, _ in col.csv}
    assert expected <= set(header)
    assert len(header) == len(set(header))


def test_markdown_report(results: StudyResults, tmp_path: Path) -> None:
    path = tmp_path / "report.md"
    write_markdown(results, path)
    text = path.read_text()
    assert text == render_markdown(results)
    assert text.startswith("# quantbench · smollm2-135m-instruct")
    assert "## What was measured" in text and "16,352 tokens" in text
    assert "| variant | scheme | status | weights (MiB) |" in text
    for name in ("bf16", "w8a8-int8", "w4a16-gptq"):
        assert f"### {name}" in text
    assert "> ⚠️ **Emulated speed: w8a8-int8.** Speed figures marked emulated" in text
    assert "41.8 ms (emulated)" in text and "20.0 ms (native)" in text
    assert "+0.12 [+0.05, +0.20]" in text
    assert "0.50×" in text
    assert "## Generations" in text and "#### `p2`" in text
    assert "#### `p3`" not in text
    assert "#### `p4`" in text
    assert "a \\| b<br>c" in text
    assert "out of memory \\| retry<br>with fewer windows" in text
    assert "group size 128 does not divide 96" in text
    assert "Top-k approximation check on the first 128 tokens" in text
    assert "| 8 | emulated | 64 + 32 |" in text


def test_markdown_without_emulation_or_metrics() -> None:
    bare = StudyResults(
        quantbench_version="0.1.0",
        created_at="2025-01-01T00:00:00+00:00",
        model={},
        config={},
        variants=[
            VariantResult(name="bf16", scheme="bf16", status="ok"),
            VariantResult(name="broken", scheme="fp8-dynamic", status="failed", error="boom"),
        ],
    )
    text = render_markdown(bare)
    assert "⚠️" not in text
    assert "broken** failed: boom" in text
    assert "No metrics were recorded for this variant." in text
    assert "## Generations\n\nNo generations were recorded." in text
    assert render_csv(bare).count("\n") == 3


def test_markdown_shows_what_vllm_measured_beside_its_speed() -> None:
    speed = _speed("native", 0.02).model_copy(
        update={
            "backend": "vllm",
            "startup_s": 95.4,
            "thread_binding": "0-1",
            "sample_output": "The capital of France is Paris.",
        }
    )
    speed.points[0] = speed.points[0].model_copy(update={"itl_s": _spread(0.0213)})
    results = StudyResults(
        quantbench_version="0.1.0",
        created_at="2025-01-01T00:00:00+00:00",
        model={},
        config={},
        variants=[
            VariantResult(
                name="w8a8-int8",
                scheme="w8a8-int8",
                status="ok",
                metrics=VariantMetrics(speed=speed),
            )
        ],
    )
    text = render_markdown(results)
    assert "OpenMP threads bound to cores 0-1" in text
    assert "(engine start-up and compilation): 95.4 s" in text
    assert "decoded greedily): `The capital of France is Paris.`" in text
    assert "| inter-token median (ms) | inter-token p90 (ms) |" in text
    assert text.count("| 21.3 |") == 1  # batch 1 has its gaps; batch 8's cells are dashes
    assert "| – | – |" in text


def test_escape_cell() -> None:
    assert escape_cell("a|b\r\nc <|im_end|> & d") == "a\\|b<br>c &lt;\\|im_end\\|&gt; &amp; d"


def test_model_card_names_the_base_model_and_serves_from_its_own_folder(
    results: StudyResults, tmp_path: Path
) -> None:
    import yaml

    from quantbench.report.model_card import render_card, write_model_cards

    study = tmp_path / "study"
    (study / "stages" / "quantize" / "k1" / "artifact").mkdir(parents=True)
    (study / "artifacts").mkdir()
    (study / "artifacts" / "w8a8-int8").symlink_to("../stages/quantize/k1/artifact")
    elsewhere = tmp_path / "another-study" / "artifact"
    elsewhere.mkdir(parents=True)
    located = results.model_copy(
        update={
            "variants": [
                results.variants[0].model_copy(update={"artifact_path": str(elsewhere)}),
                results.variants[1].model_copy(update={"artifact_path": "artifacts/w8a8-int8"}),
            ]
        }
    )
    card = render_card(located, located.variants[1])
    front = yaml.safe_load(card.split("---")[1])
    assert front["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert front["base_model_relation"] == "quantized"
    assert front["license"] == "apache-2.0"
    assert "```bash\nvllm serve ./\n```" in card
    assert 'AutoModelForCausalLM.from_pretrained("./")' in card
    assert "(in the study: `artifacts/w8a8-int8/`)" in card
    assert str(tmp_path) not in card

    written = write_model_cards(located, study)
    assert written == [study / "artifacts" / "w8a8-int8" / "README.md"]
    assert (study / "stages" / "quantize" / "k1" / "artifact" / "README.md").read_text() == card
    assert not (elsewhere / "README.md").exists()  # another study's artifact: left alone


def test_model_card_of_a_local_model_without_a_hub_id(results: StudyResults) -> None:
    import yaml

    from quantbench.report.model_card import render_card

    local = results.model_copy(update={"model": {"spec": "/models/mine", "kind": "local"}})
    card = render_card(local, local.variants[1])
    front = yaml.safe_load(card.split("---")[1])
    assert "base_model" not in front and "license" not in front
    assert card.count("# mine · w8a8-int8") == 1
    assert "no hub id is known for it" in card
    hub = local.model_copy(
        update={"model": {"spec": "/x", "kind": "local", "hub_id": "org/name", "license": "mit"}}
    )
    front = yaml.safe_load(render_card(hub, hub.variants[1]).split("---")[1])
    assert (front["base_model"], front["license"]) == ("org/name", "mit")


def test_base_model_facts_from_a_hub_cache_folder(tmp_path: Path) -> None:
    from quantbench.study import base_model_facts

    snapshot = tmp_path / "hub" / "models--Org--Some-Model" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "README.md").write_text("---\nlicense: llama3.2\ntags: [a]\n---\n# Model\n")
    assert base_model_facts("local", snapshot) == {
        "hub_id": "Org/Some-Model",
        "license": "llama3.2",
    }
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "README.md").write_text("# no front matter --- here\n")
    assert base_model_facts("local", plain) == {}
