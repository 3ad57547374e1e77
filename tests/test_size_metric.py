"""The size metric's artifact figure is the artifact as quantization saved it."""

from __future__ import annotations

from pathlib import Path

from quantbench.metrics.size import artifact_bytes
from quantbench.report.model_card import CARD_FILE


def test_the_model_card_written_later_is_not_part_of_the_artifact(tmp_path: Path) -> None:
    """The report writes a model card into each artifact; a size stage computed after that
    (a rerun after a kill, a metric added later) must give the same figure as before."""
    (tmp_path / "model.safetensors").write_bytes(b"\0" * 1000)
    (tmp_path / "config.json").write_text("{}")
    before = artifact_bytes(tmp_path)
    (tmp_path / CARD_FILE).write_text("# a model card\n" * 100)
    assert before == 1002
    assert artifact_bytes(tmp_path) == before
