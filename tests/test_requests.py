"""Worker requests and stage manifests are typed records: what the driver writes, the worker
reads back unchanged, and a file that is not such a record is refused with one line."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from quantbench.config import EvaluationConfig
from quantbench.process.requests import (
    DivergenceChoice,
    EvaluateRequest,
    MetricStage,
    QuantizedStage,
    QuantizePlan,
    QuantizeRequest,
    WorkerRequestError,
    read_request,
    request_json,
    stage_record,
)
from quantbench.results import QuantizationRecord
from quantbench.store import StageRef


def _quantize_request() -> QuantizeRequest:
    return QuantizeRequest(
        variant="w4a16",
        output="/study",
        stage=StageRef("quantize", "abc"),
        model={"source": "builtin"},
        scheme="w4a16-gptq",
        options={"group_size": 64},
        seq_len=512,
        calibration=StageRef("calibration", "def"),
        compute_dtype="auto",
        manifest=QuantizePlan(
            scheme="w4a16-gptq",
            options_requested={},
            options={"group_size": 64},
            decisions=["group 64"],
            notes=[],
            needs_calibration=True,
            calibration_key="def",
            model_fingerprint="f" * 16,
        ),
    )


def test_a_request_reads_back_as_the_driver_built_it(tmp_path: Path) -> None:
    request = _quantize_request()
    path = tmp_path / "request.json"
    path.write_text(json.dumps(request_json(request)))
    assert read_request(path, QuantizeRequest) == request

    evaluate = EvaluateRequest(
        artifact=StageRef("quantize", "abc"),
        variant="w4a16",
        is_baseline=False,
        config=EvaluationConfig(),
        output="/study",
        pending=[("perplexity", "k1")],
        own_keys={"scores": "k0"},
        baseline_keys={"scores": "b0"},
        corpus_key=None,
        divergence=DivergenceChoice(method="topk_tail", detail="two copies do not fit"),
    )
    path.write_text(json.dumps(request_json(evaluate)))
    assert read_request(path, EvaluateRequest) == evaluate


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda r: r.pop("scheme"), "scheme"),
        (lambda r: r.update(seq_len=0), "seq_len"),
        (lambda r: r.update(surprise=1), "surprise"),
        (lambda r: r["stage"].pop("key"), "stage.key"),
        (lambda r: r.update(compute_dtype="float7"), "compute_dtype"),
    ],
)
def test_a_request_that_is_not_one_is_refused_naming_the_field(
    tmp_path: Path, edit: object, field: str
) -> None:
    raw = request_json(_quantize_request())
    edit(raw)  # type: ignore[operator]
    path = tmp_path / "request.json"
    path.write_text(json.dumps(raw))
    with pytest.raises(WorkerRequestError, match=re.escape(f": {field}:")) as caught:
        read_request(path, QuantizeRequest)
    message = str(caught.value)
    assert "\n" not in message
    assert str(path) in message


def test_a_request_file_that_is_not_json_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "request.json"
    path.write_text('{"variant": ')
    with pytest.raises(WorkerRequestError, match="not a valid QuantizeRequest"):
        read_request(path, QuantizeRequest)


def test_a_manifest_gives_back_its_record_beside_the_store_fields() -> None:
    quantization = QuantizationRecord(
        wall_s=1.5,
        phases={"load_s": 0.5},
        peak_rss_bytes=1 << 20,
        torch_threads=2,
        compute_dtype="bfloat16",
        notes=[],
    )
    stage = QuantizedStage(
        **_quantize_request().manifest.model_dump(),
        quantization=quantization,
        disk_bytes=10,
        artifact_bytes=12,
    )
    manifest = {
        **stage.model_dump(mode="json"),
        "stage": "quantize",
        "key": "abc",
        "files": {},
        "attempt": 1,
    }
    assert stage_record(manifest, QuantizedStage) == stage
    record = MetricStage(metric="tasks:gsm8k", variant="w4a16", record={"accuracy": 0.5})
    assert stage_record({**record.model_dump(), "stage": "x", "key": "y"}, MetricStage) == record
