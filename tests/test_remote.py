"""Output folders at fsspec URLs, tested with fsspec's local backend (`file://`): stages are
uploaded attempt first and manifest last, are seen and fetched by a store with another
mirror (a worker on another node), and a study runs, reports and resumes at a URL."""

from __future__ import annotations

import io
import threading
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from conftest import VOCAB, run_cli, tiny_study_yaml
from quantbench import study as study_module
from quantbench.config import load_study_config
from quantbench.output import OutputFolder
from quantbench.remote import RemoteFolder
from quantbench.store import MANIFEST, StageRef, StageStore
from quantbench.study import run_study
from quantbench.study_files import load_results

REF = StageRef("quantize", "0123456789abcdef")


def quiet() -> Console:
    return Console(file=io.StringIO(), width=200)


def _store(tmp_path: Path, mirror: str) -> StageStore:
    return StageStore(tmp_path / mirror, RemoteFolder(f"file://{tmp_path}/remote/stages"))


def _commit(store: StageStore, files: dict[str, bytes], **manifest: Any) -> Path:
    with store.build(REF) as work:
        for name, data in files.items():
            (work / name).parent.mkdir(parents=True, exist_ok=True)
            (work / name).write_bytes(data)
        return store.commit(REF, work, manifest)


def test_a_committed_stage_is_uploaded_files_first_manifest_last(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    upload, write = RemoteFolder.upload_folder, RemoteFolder.write_json

    def spy_upload(self: RemoteFolder, *args: Any, **kwargs: Any) -> int:
        calls.append("files")
        return upload(self, *args, **kwargs)

    def spy_write(self: RemoteFolder, value: Any, *parts: str) -> None:
        calls.append(parts[-1])
        write(self, value, *parts)

    monkeypatch.setattr(RemoteFolder, "upload_folder", spy_upload)
    monkeypatch.setattr(RemoteFolder, "write_json", spy_write)
    worker = _store(tmp_path, "node-a")
    _commit(worker, {"weights.bin": b"w" * 1000, "artifact/config.json": b"{}"}, answer=42)
    assert calls == ["files", MANIFEST]

    stage = tmp_path / "remote" / "stages" / REF.stage / REF.key
    attempts = [p for p in stage.iterdir() if p.is_dir()]
    assert [p.name.startswith("attempt-") for p in attempts] == [True]
    assert (attempts[0] / "weights.bin").read_bytes() == b"w" * 1000
    assert not (attempts[0] / MANIFEST).exists()
    assert not [p for p in stage.rglob("*") if ".tmp-" in p.name]

    other = _store(tmp_path, "node-b")  # another node: its mirror is empty
    assert other.is_done(REF)
    assert other.manifest(REF)["answer"] == 42
    assert not (tmp_path / "node-b" / REF.stage / REF.key).exists()  # nothing fetched yet
    fetched = other.path(REF)
    assert (fetched / "weights.bin").read_bytes() == b"w" * 1000
    assert (fetched / "artifact" / "config.json").read_bytes() == b"{}"
    assert other.location(REF, "artifact") == (
        f"file://{tmp_path}/remote/stages/{REF.stage}/{REF.key}/{attempts[0].name}/artifact"
    )


def test_an_upload_cut_short_is_not_done_and_the_next_attempt_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write = RemoteFolder.write_json

    def killed(self: RemoteFolder, value: Any, *parts: str) -> None:
        raise KeyboardInterrupt("killed before the manifest")

    monkeypatch.setattr(RemoteFolder, "write_json", killed)
    with pytest.raises(KeyboardInterrupt, match="killed before the manifest"):
        _commit(_store(tmp_path, "node-a"), {"weights.bin": b"old"})
    monkeypatch.setattr(RemoteFolder, "write_json", write)

    reader = _store(tmp_path, "node-b")
    assert not reader.is_done(REF)
    assert not (tmp_path / "node-a" / REF.stage / REF.key).exists()  # nor done locally
    _commit(_store(tmp_path, "node-a"), {"weights.bin": b"new"})
    assert (reader.path(REF) / "weights.bin").read_bytes() == b"new"


def test_two_workers_committing_one_stage_leave_one_whole_attempt(tmp_path: Path) -> None:
    contents = {
        "node-a": {f"shard-{i}.bin": b"a" * 4096 for i in range(20)},
        "node-b": {f"shard-{i}.bin": b"b" * 4096 for i in range(20)},
    }
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def worker(node: str) -> None:
        try:
            store = _store(tmp_path, node)
            barrier.wait()
            _commit(store, contents[node], node=node)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in contents]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    reader = _store(tmp_path, "node-c")
    winner = reader.manifest(REF)["node"]
    folder = reader.path(REF)
    got = {p.name: p.read_bytes() for p in folder.iterdir() if p.name != MANIFEST}
    assert got == contents[winner]  # one attempt's files, never a mix


def test_workers_sharing_a_mirror_download_a_stage_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = {f"shard-{i}.bin": bytes([i]) * 65536 for i in range(8)}
    _commit(_store(tmp_path, "node-a"), files)
    downloads: list[int] = []
    download = RemoteFolder.download_folder

    def counted(self: RemoteFolder, *args: Any, **kwargs: Any) -> int:
        downloads.append(1)
        return download(self, *args, **kwargs)

    monkeypatch.setattr(RemoteFolder, "download_folder", counted)
    seen: list[dict[str, bytes]] = []
    barrier = threading.Barrier(4)

    def reader() -> None:
        store = _store(tmp_path, "node-b")  # one node, one mirror, four processes' worth
        barrier.wait()
        folder = store.path(REF)
        seen.append({p.name: p.read_bytes() for p in folder.iterdir() if p.name != MANIFEST})

    threads = [threading.Thread(target=reader) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert seen == [files] * 4
    assert len(downloads) == 1


def test_a_study_at_a_url_runs_reports_and_resumes_from_another_mirror(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"file://{tmp_path}/bucket/study"
    evaluation = {
        "metrics": ["size", "perplexity", "divergence"],
        "corpus": {"window": 64, "stride": 64, "max_tokens": 256, "top_k": VOCAB},
    }
    config = tiny_study_yaml(
        tmp_path / "study.yaml",
        tiny_model,
        tmp_path / "unused",
        ["bf16", {"scheme": "w4a16-gptq", "group_size": 32}],
        evaluation,
    )
    monkeypatch.setenv("QUANTBENCH_CACHE_DIR", str(tmp_path / "cache-driver"))
    first = run_cli("run", "--config", str(config), "--out", url)
    assert first.returncode == 0, first.stderr[-3000:]
    assert f"{url}/results.json" in first.stderr

    bucket = tmp_path / "bucket" / "study"
    for name in ("results.json", "results.csv", "report.md", "report.html"):
        assert (bucket / name).is_file(), name
    assert list((bucket / "logs").glob("quantize-*.log"))
    results = load_results(url)
    quantized = results.variant("w4a16-gptq-g32")
    # The stable name is a copy at the URL (object stores have no links), marked last
    # with the stage attempt it came from; the model card goes there.
    assert quantized.artifact_path == f"{url}/artifacts/w4a16-gptq-g32"
    artifact = Path(quantized.artifact_path.removeprefix("file://"))
    assert (artifact / "config.json").is_file() and (artifact / "README.md").is_file()
    stage_folder = bucket / "stages" / "quantize" / quantized.stage_keys["quantize"]
    (stage,) = stage_folder.glob("attempt-*/artifact")
    source = (artifact / ".quantbench-source").read_text()
    assert source == "/".join(stage.parent.relative_to(bucket / "stages").parts)
    copied = {p.name: p.read_bytes() for p in artifact.iterdir() if not p.name.startswith(".")}
    original = {p.name: p.read_bytes() for p in stage.iterdir()}
    assert {k: v for k, v in copied.items() if k != "README.md"} == original
    first_figures = quantized.metrics.divergence
    assert first_figures is not None and first_figures.kl_mean.estimate > 0

    # A driver with an empty mirror (another machine): nothing is quantized again, the new
    # metric's worker fetches the artifact and the baseline's stages from the URL.
    monkeypatch.setenv("QUANTBENCH_CACHE_DIR", str(tmp_path / "cache-elsewhere"))

    def no_quantization(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("stages done at the URL must not be quantized again")

    monkeypatch.setattr(study_module, "run_worker", no_quantization)
    extended = load_study_config(
        config,
        {"out": url, "evaluation": {"metrics": [*evaluation["metrics"], "generations"]}},
    )
    resumed = run_study(extended, quiet())
    again = resumed.variant("w4a16-gptq-g32")
    assert again.metrics.divergence == first_figures
    assert again.metrics.generations is not None and again.metrics.generations.n_prompts > 0
    assert load_results(url).variant("w4a16-gptq-g32").metrics.generations is not None
    mirror = OutputFolder.open(url).local
    assert str(mirror).startswith(str(tmp_path / "cache-elsewhere"))

    assert load_results(url).variant("w4a16-gptq-g32").artifact_path == str(quantized.artifact_path)
    report = run_cli("report", url, "--max-kl", "0")
    assert report.returncode == 0, report.stderr[-2000:]
    assert "only the baseline" in (bucket / "report.md").read_text()


def test_an_unknown_url_scheme_is_a_clear_error(tmp_path: Path) -> None:
    result = run_cli("report", "nosuchproto://bucket/study")
    assert result.returncode == 2
    assert "nosuchproto://bucket/study" in result.stderr
    assert "Traceback" not in result.stderr
