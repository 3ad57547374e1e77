"""The HTML report and its plots, built from a hand-made `StudyResults` (no models).

The last test renders the page in headless Chromium (skipped when it is not installed): no
console message, every plot drawn with data, a screenshot that is not blank.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from quantbench.recommend import recommend
from quantbench.report import plots
from quantbench.report.document import GenerationOutput, Span
from quantbench.report.headline import HEADLINE_COLUMNS, headline_rows
from quantbench.report.html import (
    SECTION_IDS,
    render_html,
    write_html,
)
from quantbench.report.markdown import EMPTY
from quantbench.report.sections import diverging_prefix
from quantbench.results import (
    Constraints,
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
)
from records import MIB
from records import perplexity_record as _perplexity
from records import size_record as _size
from records import spread as _spread

CHROMIUM = shutil.which("chromium")
"""Any `chromium` on PATH, as .ci/run accepts (Debian's /usr/bin/chromium, a snap, a
symlink); None when there is none."""
EXTERNAL_REFERENCE = re.compile(
    r"""(?:\b(?:src|href|action|poster|data)\s*=\s*["']?\s*(?:https?:)?//)"""
    r"""|(?:url\(\s*["']?\s*(?:https?:)?//)|(?:@import)""",
    re.IGNORECASE,
)


# --------------------------------------------------------------------------------------
# A hand-made study (same construction style as test_report_files.py)
# --------------------------------------------------------------------------------------


def _divergence(kl: float, top1: float) -> DivergenceRecord:
    return DivergenceRecord(
        n_tokens=16352,
        top_k=256,
        kl_mean=Interval(estimate=kl, low=kl * 0.9, high=kl * 1.1),
        kl_median=kl / 3,
        kl_p99=kl * 10,
        kl_max=kl * 100,
        top1_agreement=Interval(estimate=top1, low=top1 - 0.004, high=top1 + 0.004),
        ref_prob_delta={"mean": -0.002, "p1": -0.1, "p50": 0.0, "p99": 0.08},
    )


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


PROMPTS = [
    "What is the capital of Canada?",
    "Say a | b, then c",
    "Name a <tag> & an ampersand",
    "Count to three",
    "Write a Python function",
]
CATEGORIES = ["facts", "facts", "format", "format", "code"]
BASE_TEXTS = [
    "The capital city of Canada is Ottawa.",
    "a | b\nc",
    "Use <|im_end|> & <script>alert(1)</script> carefully.",
    "one, two, three",
    "def f(): pass",
]
VARIANT_TEXTS = [
    "The capital city of Canada is Toronto.",  # departs mid-sentence
    "a | b\nc",  # identical
    "Use <|im_end|> & <script>alert(2)</script> carefully.",  # departs inside markup-like text
    "one, two",  # stops early
    "def g(): pass",  # departs after a common prefix
]


def _generations(texts: list[str], baseline: bool) -> GenerationsRecord:
    items = [
        GenerationItem(
            id=f"p{i}",
            category=cat,
            prompt=prompt,
            text=text,
            n_tokens=10,
            exact_match=None if baseline else text == BASE_TEXTS[i],
            rouge_l=None if baseline else 0.75,
            first_diff=None if baseline or text == BASE_TEXTS[i] else 3,
        )
        for i, (cat, prompt, text) in enumerate(zip(CATEGORIES, PROMPTS, texts, strict=True))
    ]
    return GenerationsRecord(
        suite="builtin",
        suite_sha256="1" * 64,
        max_new_tokens=64,
        n_prompts=len(items),
        exact_match_rate=None if baseline else 0.2,
        rouge_l_mean=None if baseline else 0.75,
        items=items,
    )


def _study() -> StudyResults:
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
            generations=_generations(BASE_TEXTS, baseline=True),
        ),
    )
    emulated = VariantResult(
        name="w8a8-int8",
        scheme="w8a8-int8",
        status="ok",
        disk_bytes=128 * MIB,
        quantization=QuantizationRecord(wall_s=42.5, peak_rss_bytes=900 * MIB),
        metrics=VariantMetrics(
            size=_size(128),
            perplexity=_perplexity(15.12, Interval(estimate=0.12, low=0.05, high=0.2)),
            divergence=_divergence(0.0123, 0.973),
            speed=_speed("emulated", 0.0418),
            generations=_generations(VARIANT_TEXTS, baseline=False),
        ),
    )
    gptq = VariantResult(
        name="w4a16-gptq",
        scheme="w4a16-gptq",
        status="ok",
        disk_bytes=80 * MIB,
        metrics=VariantMetrics(
            size=_size(80),
            perplexity=_perplexity(17.9, Interval(estimate=2.9, low=2.5, high=3.3)),
            divergence=_divergence(0.19, 0.78),
            errors={"speed": "out of memory | retry\nwith <fewer> windows"},
        ),
    )
    failed = VariantResult(name="fp8-dynamic", scheme="fp8-dynamic", status="failed", error="boom")
    return StudyResults(
        quantbench_version="0.1.0",
        created_at="2025-01-01T00:00:00+00:00",
        model={"spec": "smollm2-135m-instruct", "notes": ["a <caveat> from the loader"]},
        config={"evaluation": {"device": "cpu"}},
        variants=[baseline, emulated, gptq, failed],
        provenance={
            "quantbench": "0.1.0",
            "seed": 1234,
            "versions": {"torch": "2.5.1", "transformers": "4.46.0"},
            "machine": {"cpu": "Xeon <test>", "threads": 8},
        },
    )


def _with_recommendation(results: StudyResults) -> StudyResults:
    rec = recommend(results, Constraints(max_kl=0.05, max_ppl_increase_pct=10))
    return results.model_copy(update={"recommendation": rec})


def _bare() -> StudyResults:
    return StudyResults(
        quantbench_version="0.1.0",
        created_at="2025-01-01T00:00:00+00:00",
        model={},
        config={},
        variants=[
            VariantResult(name="bf16", scheme="bf16", status="ok"),
            VariantResult(name="broken", scheme="fp8-dynamic", status="failed", error="boom"),
        ],
    )


@pytest.fixture(scope="module")
def results() -> StudyResults:
    return _with_recommendation(_study())


@pytest.fixture(scope="module")
def page(results: StudyResults) -> str:
    return render_html(results)


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------


class _TableText(HTMLParser):
    """The text of each cell of the first `<table class="headline">`, row by row."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.rows: list[list[str]] = []
        self._in_table = False
        self._done = False
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table" and ("class", "headline") in attrs and not self._done:
            self._in_table = True
        elif self._in_table and tag == "tr":
            self.rows.append([])
        elif self._in_table and tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "table" and self._in_table:
            self._in_table, self._done = False, True
        elif self._in_table and tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append("".join(self._cell))
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def _svgs(text: str) -> list[str]:
    return re.findall(r"<svg\b.*?</svg>", text, flags=re.DOTALL)


def _data_groups(svg: str) -> list[str]:
    """The contents of the groups the plots tag as data (`id="qb-…-data-N"`)."""
    return re.findall(r'<g id="qb-[\w-]+-data-\d+"[^>]*>(.*?)</g>', svg, flags=re.DOTALL)


# --------------------------------------------------------------------------------------
# The page
# --------------------------------------------------------------------------------------


def test_every_section_present_in_order(page: str) -> None:
    # The sections a reader is promised, written out: looping over the product's own
    # SECTION_IDS alone passed a page (and a tuple) that had dropped one.
    assert SECTION_IDS == (
        "measured",
        "warning",
        "headline",
        "recommendation",
        "plots",
        "variants",
        "generations",
        "provenance",
    )
    assert page.startswith("<!DOCTYPE html>")
    positions = [page.find(f'<section id="{sid}">') for sid in SECTION_IDS]
    assert all(p >= 0 for p in positions), dict(zip(SECTION_IDS, positions, strict=True))
    assert positions == sorted(positions)
    for sid in SECTION_IDS:
        assert page.count(f'id="{sid}"') == 1
        assert f'href="#{sid}"' in page


def test_self_contained(page: str) -> None:
    assert not EXTERNAL_REFERENCE.search(page), EXTERNAL_REFERENCE.search(page)
    lowered = page.lower()
    assert "<script" not in lowered  # the generation text's <script> is escaped
    assert "<link" not in lowered and "<iframe" not in lowered and "<img" not in lowered
    assert "<?xml" not in page and "<!doctype svg" not in lowered
    assert "<style>" in page and '<meta charset="utf-8">' in page
    ids = re.findall(r'\bid="([^"]+)"', page)
    assert len(ids) == len(set(ids)), "element ids must be unique across the inline SVGs"


def test_text_is_escaped(page: str) -> None:
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&lt;|im_end|&gt; &amp;" in page
    assert "out of memory | retry\nwith &lt;fewer&gt; windows" in page
    assert "a &lt;caveat&gt; from the loader" in page
    assert "Name a &lt;tag&gt; &amp; an ampersand" in page


def test_headline_agrees_with_shared_columns(page: str, results: StudyResults) -> None:
    parser = _TableText()
    parser.feed(page)
    header, *rows = parser.rows
    assert header == [c.title for c in HEADLINE_COLUMNS]
    expected = [[c.text(row) or EMPTY for c in HEADLINE_COLUMNS] for row in headline_rows(results)]
    assert rows == expected
    assert "+0.12 [+0.05, +0.20]" in {cell for row in rows for cell in row}


def test_emulated_speed_cells_marked(page: str) -> None:
    marked = re.findall(r'<td class="[^"]*\bemulated\b[^"]*"[^>]*>([^<]*)</td>', page)
    assert "41.8 ms (emulated)" in marked
    assert "200.0 tok/s @ batch 8 (emulated)" in marked
    assert not any("native" in text for text in marked)
    assert "20.0 ms (native)" in page


def test_warning_banner_only_when_emulated(page: str) -> None:
    warning = page[page.index('<section id="warning">') : page.index('<section id="headline">')]
    assert "Emulated speed: w8a8-int8" in warning
    # Was `A or B` with A implying B; checked failing first against a banner without the
    # sentence (the test then fails; the old check passed "real low-precision" alone).
    assert "they say nothing about real low-precision kernels" in warning
    assert "fp8-dynamic</b> failed: boom" in warning
    bare = render_html(_bare())
    warning = bare[bare.index('<section id="warning">') : bare.index('<section id="headline">')]
    assert "Emulated speed" not in warning
    assert "broken</b> failed: boom" in warning


def test_recommendation_section(page: str) -> None:
    section = page[page.index('<section id="recommendation">') : page.index('<section id="plots">')]
    assert 'class="summary"' in section
    assert "max KL 0.05 nats/token" in section
    assert "<dt>max KL</dt><dd>0.05 nats/token</dd>" in section
    assert "<dt>max perplexity increase</dt><dd>10%</dd>" in section
    assert "<dt>max accuracy drop</dt><dd>not applied</dd>" in section
    assert "smallest on disk" in section and "not judged" in section
    assert "<b>w4a16-gptq</b>" in section and "not acceptable" in section
    assert "KL 0.19" in section  # the broken constraint's values
    assert "not drawn: the speed figures are emulated" in section


def test_no_recommendation_note() -> None:
    text = render_html(_study())
    section = text[text.index('<section id="recommendation">') : text.index('<section id="plots">')]
    assert "No recommendation was computed" in section


def test_generations_side_by_side_with_marks(page: str) -> None:
    section = page[
        page.index('<section id="generations">') : page.index('<section id="provenance">')
    ]
    for prompt in ("What is the capital of Canada?", "Count to three"):
        assert prompt in section
    assert section.count('<div class="prompt">') == len(PROMPTS)
    assert section.count("<details open>") == len(set(CATEGORIES))  # few prompts: all open
    assert "The capital city of Canada is <mark>Toronto.</mark>" in section
    assert "def <mark>g(): pass</mark>" in section
    assert "alert(<mark>2)&lt;/script&gt; carefully.</mark>" in section
    assert 'one, two<mark class="end"' in section
    identical = re.search(r"a \| b\nc</p>", section)
    assert identical is not None
    assert "<mark>a | b" not in section
    assert section.count("<mark>") == 3 + 1  # three departures + the lead's example
    assert "from token 3" in section


def _marked(reference: str, text: str) -> tuple[Span, ...]:
    departs = None if text == reference else diverging_prefix(reference, text)
    return GenerationOutput("v", text, 1, departs_at=departs).marked


def test_highlight_helpers() -> None:
    assert _marked("same", "same") == (Span("same"),)
    assert _marked("abc", "abd") == (Span("abd", "mark"),)  # backs off to the word
    assert _marked("Ottawa is", "Ottawa was") == (Span("Ottawa "), Span("was", "mark"))
    assert _marked("<a>", "<b>") == (Span("<"), Span("b>", "mark"))
    assert diverging_prefix("hello world", "hello") == 5
    assert _marked("hello world", "hello") == (
        Span("hello"),
        Span("[ends here; the baseline continues]", "end"),
    )
    assert _marked("hi", "hi there") == (Span("hi"), Span(" there", "mark"))


def test_provenance_pretty_printed(page: str) -> None:
    section = page[page.index('<section id="provenance">') :]
    assert "<dt>seed</dt>" in section and ">1234<" in section
    versions = json.dumps({"torch": "2.5.1", "transformers": "4.46.0"}, indent=2)
    assert "<pre>" + versions.replace('"', "&#34;") + "</pre>" in section
    assert "Xeon &lt;test&gt;" in section
    bare = render_html(_bare())
    assert "No provenance was recorded" in bare[bare.index('<section id="provenance">') :]


def test_write_html_atomic(results: StudyResults, tmp_path: Path) -> None:
    path = tmp_path / "out" / "report.html"
    write_html(results, path)
    assert path.read_text() == render_html(results)
    assert [p.name for p in path.parent.iterdir()] == ["report.html"]


# --------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------


def test_plots_are_inline_svg_with_data(results: StudyResults, page: str) -> None:
    import matplotlib

    pyplot_before = "matplotlib.pyplot" in sys.modules
    fonttype = matplotlib.rcParams["svg.fonttype"]
    drawn = {
        "size": plots.size_vs_quality(results),
        "speed": plots.speed_vs_quality(results),
        **{m: plots.metric_bars(results, m) for m in plots.BAR_METRICS},
    }
    assert matplotlib.rcParams["svg.fonttype"] == fonttype
    assert pyplot_before or "matplotlib.pyplot" not in sys.modules
    for name, svg in drawn.items():
        assert svg is not None, name
        assert svg.startswith("<svg ") and svg.rstrip().endswith("</svg>"), name
        assert "<metadata" not in svg
        groups = _data_groups(svg)
        assert groups and all("<path" in g or "<use" in g for g in groups), name
    # size: all three ok variants (the baseline's KL is 0) and the front through them
    assert len(_data_groups(drawn["size"] or "")) == 3
    assert 'id="qb-size-quality-front"' in (drawn["size"] or "")
    speed = drawn["speed"] or ""
    assert len(_data_groups(speed)) == 2  # the gptq variant has no speed record
    assert plots.EMULATED_LABEL in speed and "Warning: hollow points" in speed
    assert 'id="qb-speed-quality-front"' not in speed  # speed cannot be judged
    assert len(_data_groups(drawn["kl_mean"] or "")) == 2
    assert len(_svgs(page)) == 6


def test_front_computed_without_recommendation() -> None:
    study = _study()
    svg = plots.size_vs_quality(study) or ""
    assert 'id="qb-size-quality-front"' in svg and "Pareto front" in svg
    native = study.model_copy(
        update={
            "variants": [
                v.model_copy(
                    update={
                        "metrics": v.metrics.model_copy(
                            update={"speed": _speed("native", 0.03) if v.metrics.speed else None}
                        )
                    }
                )
                for v in study.variants
            ]
        }
    )
    speed = plots.speed_vs_quality(native) or ""
    assert 'id="qb-speed-quality-front"' in speed
    assert plots.EMULATED_LABEL not in speed and "Warning" not in speed


def test_plots_none_without_data() -> None:
    bare = _bare()
    assert plots.size_vs_quality(bare) is None
    assert plots.speed_vs_quality(bare) is None
    for metric in plots.BAR_METRICS:
        assert plots.metric_bars(bare, metric) is None
    text = render_html(bare)
    assert "<svg" not in text
    assert text.count("Not drawn:") == 2 + len(plots.BAR_METRICS)
    no_divergence = _study().model_copy(
        update={
            "variants": [
                v.model_copy(update={"metrics": v.metrics.model_copy(update={"divergence": None})})
                for v in _study().variants
            ]
        }
    )
    assert plots.metric_bars(no_divergence, "kl_mean") is None
    assert plots.metric_bars(no_divergence, "top1_agreement") is None
    assert plots.quality_metric(no_divergence) == "perplexity"
    assert plots.size_vs_quality(no_divergence) is not None  # falls back to perplexity
    with pytest.raises(ValueError, match="unknown metric"):
        plots.metric_bars(bare, "accuracy")  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------
# In a real browser
# --------------------------------------------------------------------------------------

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--hide-scrollbars",
]
WINDOW = (1280, 6000)


def _chromium(tmp: Path, name: str, *args: str) -> subprocess.CompletedProcess[str]:
    profile = tmp / f"profile-{name}"
    return subprocess.run(
        [str(_require_chromium()), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )


def _require_chromium() -> str:
    """The browser, or a skip; a failure instead when QUANTBENCH_REQUIRE_CHROMIUM=1 (set by
    .ci/run, so that CI fails rather than skips when Chromium cannot run there)."""
    if CHROMIUM is None:
        if os.environ.get("QUANTBENCH_REQUIRE_CHROMIUM") == "1":
            pytest.fail("QUANTBENCH_REQUIRE_CHROMIUM=1 but there is no chromium on PATH")
        pytest.skip("no chromium on PATH (apt install chromium)")
    return CHROMIUM


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", "not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def _hex_rgb(color: str) -> tuple[int, int, int]:
    return int(color[1:3], 16), int(color[3:5], 16), int(color[5:7], 16)


def test_renders_in_headless_chromium(results: StudyResults, tmp_path: Path) -> None:
    from PIL import Image

    _require_chromium()

    report = tmp_path / "report.html"
    write_html(results, report)
    url = report.resolve().as_uri()
    shot = tmp_path / "shot.png"

    run = _chromium(
        tmp_path,
        "shot",
        f"--screenshot={shot}",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
        "--enable-logging=stderr",
        "--v=0",
        url,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    console = [
        line
        for line in run.stderr.splitlines()
        if "CONSOLE" in line or "Uncaught" in line or "Failed to load resource" in line
    ]
    assert not console, "\n".join(console)  # the page has no script: any message is an error

    assert _png_size(shot) == WINDOW
    with Image.open(shot) as image:
        rgb = image.convert("RGB")
    colors = rgb.getcolors(maxcolors=1 << 22) or []
    assert len(colors) > 200, f"only {len(colors)} colours: the screenshot looks blank"
    counts = {color: n for n, color in colors}
    white = counts.get((255, 255, 255), 0)
    assert white < 0.97 * WINDOW[0] * WINDOW[1], "the screenshot is almost all white"
    # The variants' plot colours are painted (bars and markers), so the plots are not empty.
    for color in plots.PALETTE[:3]:
        assert counts.get(_hex_rgb(color), 0) > 100, f"plot colour {color} is not on the page"
    if shot_dir := _keep_screenshot_dir():
        shutil.copy(shot, shot_dir / "report_html_screenshot.png")

    dump = _chromium(tmp_path, "dom", "--dump-dom", url)
    assert dump.returncode == 0, dump.stderr[-2000:]
    dom = dump.stdout
    for sid in SECTION_IDS:
        assert f'id="{sid}"' in dom
    svgs = _svgs(dom)
    assert len(svgs) == 6
    for svg in svgs:
        tag = svg[: svg.index(">")]
        width = re.search(r'\bwidth="([\d.]+)', tag)
        height = re.search(r'\bheight="([\d.]+)', tag)
        assert width and height and float(width.group(1)) > 0 and float(height.group(1)) > 0
        assert "<path" in svg
        groups = _data_groups(svg)
        assert groups and all("<path" in g or "<use" in g for g in groups), tag


def _keep_screenshot_dir() -> Path | None:
    """Where to keep a copy of the screenshot: $QUANTBENCH_KEEP_SCREENSHOTS, if set."""
    where = os.environ.get("QUANTBENCH_KEEP_SCREENSHOTS")
    if not where:
        return None
    path = Path(where)
    path.mkdir(parents=True, exist_ok=True)
    return path
