"""A scheme and a metric are each one file plus one registry line: here the file is written
by the test and the line is an entry point of a package the test installs on PYTHONPATH, so
no project file is edited, and a study with both runs on a tiny model in worker processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from quantbench.errors import UserError
from quantbench.registry import Registry, _plugin_entries

TOY_PLUGIN = '''
"""A toy quantbench plugin: a scheme and a metric, each defined here and nowhere else."""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from quantbench.schemes.base import DEFAULT_IGNORE, Scheme


@dataclass(frozen=True)
class ToyW8(Scheme):
    """INT8 weights per output channel, round to nearest, no calibration (GPTQ is what the
    built-in w8a16-gptq adds): one compressed-tensors config group."""

    def build_recipe(self, options: dict[str, Any]) -> list[Any]:
        from llmcompressor.modifiers.quantization import QuantizationModifier

        weights = {"num_bits": 8, "type": "int", "symmetric": True, "strategy": "channel"}
        groups = {"group_0": {"targets": ["Linear"], "weights": weights}}
        return [QuantizationModifier(config_groups=groups, ignore=list(options["ignore"]))]


TOY_W8 = ToyW8(
    name="toy-w8",
    description="INT8 weights, round to nearest (a plugin's scheme)",
    needs_calibration=False,
    native_hardware="whatever the plugin says",
    weight_format="int8, per channel",
    activation_format="bf16",
    defaults={"ignore": list(DEFAULT_IGNORE)},
    runtime_family="w8a16",
)


class WeightFilesRecord(BaseModel):
    files: int
    bytes: int


class WeightFilesMetric:
    """How many safetensors files the artifact has, and their bytes: a metric that needs
    neither the model nor the baseline."""

    name = "weight-files"
    version = 1
    needs_model = False
    uses_corpus = False
    own_inputs: tuple[str, ...] = ()
    baseline_inputs: tuple[str, ...] = ()
    reported = True

    def key_config(self, config: Any) -> dict[str, Any]:
        return {}

    def compute(self, ctx: Any) -> WeightFilesRecord:
        files = sorted(Path(ctx.artifact).glob("*.safetensors"))
        return WeightFilesRecord(files=len(files), bytes=sum(f.stat().st_size for f in files))
'''

ENTRY_POINTS = """
[quantbench.schemes]
toy-w8 = qb_toy_plugin:TOY_W8

[quantbench.metrics]
weight-files = qb_toy_plugin:WeightFilesMetric
"""


def install_toy_plugin(folder: Path, entry_points: str = ENTRY_POINTS) -> Path:
    """A package on a folder that PYTHONPATH can name: the module, and its dist-info whose
    entry points register it (what `pip install` of a plugin leaves behind)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "qb_toy_plugin.py").write_text(TOY_PLUGIN)
    info = folder / "qb_toy_plugin-0.1.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: qb-toy-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(entry_points)
    return folder


def _with_plugin(folder: Path) -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(folder), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "COLUMNS": "200"}


def test_a_plugins_scheme_and_metric_run_in_a_study(tiny_model: Path, tmp_path: Path) -> None:
    plugin = install_toy_plugin(tmp_path / "plugin")
    out = tmp_path / "out"
    command = [sys.executable, "-m", "quantbench", "run", "--model", str(tiny_model)]
    command += ["--schemes", "bf16,toy-w8", "--metrics", "size,weight-files", "--out", str(out)]
    done = subprocess.run(
        command, env=_with_plugin(plugin), capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    variants = {v["name"]: v for v in results["variants"]}
    assert set(variants) == {"bf16", "toy-w8"}
    assert all(v["status"] == "ok" for v in variants.values())
    for variant in variants.values():
        record = variant["metrics"]["plugins"]["weight-files"]
        assert record["files"] >= 1 and record["bytes"] > 0
    toy, base = variants["toy-w8"], variants["bf16"]
    assert toy["metrics"]["size"]["weights_bytes"] < base["metrics"]["size"]["weights_bytes"]
    config = json.loads((out / "artifacts" / "toy-w8" / "config.json").read_text())
    (group,) = config["quantization_config"]["config_groups"].values()
    assert group["weights"]["num_bits"] == 8 and group["input_activations"] is None
    assert "lm_head" in group["targets"] or "lm_head" in config["quantization_config"]["ignore"]
    assert "`weight-files` (plugin metric)" in (out / "report.md").read_text()

    listed = subprocess.run(
        [sys.executable, "-m", "quantbench", "schemes"],
        env=_with_plugin(plugin),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert listed.returncode == 0 and "toy-w8" in listed.stdout
    # The family the scheme declares decides what vLLM is said to do with it.
    from quantbench.backends.vllm_support import hardware_here, support_for

    toy_listing = " ".join(listed.stdout[listed.stdout.index("toy-w8") :].split("\n\n")[0].split())
    w8a16 = support_for("w8a16", hardware_here())
    assert " ".join((w8a16.kernel or w8a16.reason).split()) in toy_listing


def test_without_the_plugin_its_names_are_unknown(tiny_model: Path, tmp_path: Path) -> None:
    command = [sys.executable, "-m", "quantbench", "plan", "--model", str(tiny_model)]
    done = subprocess.run(
        [*command, "--schemes", "toy-w8", "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and "unknown scheme 'toy-w8'" in done.stderr


def test_a_plugin_may_not_take_a_built_in_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clash = "[quantbench.schemes]\nw4a16-gptq = qb_toy_plugin:TOY_W8\n"
    plugin = install_toy_plugin(tmp_path / "plugin", clash)
    monkeypatch.syspath_prepend(str(plugin))
    _plugin_entries.cache_clear()
    try:
        registry = Registry("schemes", {"w4a16-gptq": "quantbench.schemes.gptq:W4A16_GPTQ"})
        with pytest.raises(UserError, match=r"registers schemes w4a16-gptq .* rename"):
            list(registry)
    finally:
        _plugin_entries.cache_clear()


def test_a_plugin_entry_that_does_not_import_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = "[quantbench.metrics]\nbroken = qb_toy_plugin:NoSuchMetric\n"
    plugin = install_toy_plugin(tmp_path / "plugin", broken)
    monkeypatch.syspath_prepend(str(plugin))
    _plugin_entries.cache_clear()
    try:
        registry = Registry("metrics", {})
        assert list(registry) == ["broken"]
        with pytest.raises(UserError, match=r"metrics plugin 'broken' .* cannot be loaded"):
            registry.load("broken")
    finally:
        _plugin_entries.cache_clear()


def test_the_toy_plugin_source_is_what_the_docs_show() -> None:
    """docs/development.md shows this plugin as the example of an extension point."""
    docs = (Path(__file__).resolve().parents[1] / "docs" / "development.md").read_text()
    assert textwrap.dedent(ENTRY_POINTS).strip() in docs
