"""Typed, versioned study results: what `results.json` holds and reports are built from.

Reports read these records only, never live models, so a report can be rebuilt anywhere.
Bump SCHEMA_VERSION when a field changes meaning or is removed; adding a field is compatible.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from quantbench.errors import UserError
from quantbench.store import write_json_atomic

SCHEMA_VERSION = 1
RESULTS_FILE = "results.json"


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


class QuantizationRecord(_Record):
    wall_s: float = Field(description="wall-clock seconds of the worker process, load to save")
    phases: dict[str, float] = Field(default_factory=dict, description="seconds per phase")
    peak_rss_bytes: int = Field(description="peak resident memory of the worker process, bytes")
    torch_threads: int | None = None


class VariantResult(_Record):
    name: str
    scheme: str
    status: Literal["ok", "failed"]
    error: str | None = None
    log_path: str | None = None
    artifact_path: str | None = None
    options_requested: dict[str, Any] = Field(default_factory=dict)
    options: dict[str, Any] = Field(
        default_factory=dict, description="options actually used, after pre-flight decisions"
    )
    decisions: list[str] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)
    needs_calibration: bool = False
    quantization: QuantizationRecord | None = None
    disk_bytes: int | None = Field(default=None, description="bytes of the weight files")
    artifact_bytes: int | None = Field(default=None, description="bytes of the whole artifact")
    stage_keys: dict[str, str] = Field(default_factory=dict)


class CalibrationRecord(_Record):
    key: str
    source: str
    num_samples: int
    seq_len: int
    seed: int
    total_tokens: int
    samples_sha256: str


class StudyResults(_Record):
    schema_version: int = SCHEMA_VERSION
    quantbench_version: str
    created_at: str
    model: dict[str, Any]
    config: dict[str, Any]
    calibration: CalibrationRecord | None = None
    variants: list[VariantResult]

    def variant(self, name: str) -> VariantResult:
        for variant in self.variants:
            if variant.name == name:
                return variant
        raise KeyError(name)


def save_results(out: Path, results: StudyResults) -> Path:
    path = out / RESULTS_FILE
    write_json_atomic(path, results.model_dump(mode="json"))
    return path


def load_results(out: Path) -> StudyResults:
    path = out / RESULTS_FILE if out.is_dir() else out
    if not path.is_file():
        raise UserError(f"no {RESULTS_FILE} in {out}; run `quantbench run --out {out}` first")
    import json

    data = json.loads(path.read_text())
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise UserError(
            f"{path} has schema version {version}; this quantbench reads version {SCHEMA_VERSION}"
        )
    return StudyResults.model_validate(data)
