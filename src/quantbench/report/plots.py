"""Plots of a study as inline SVG text, for the HTML report.

Built on `matplotlib.figure.Figure` with an Agg canvas attached per figure, never pyplot, so no
global figure state is created or leaked and any backend the caller chose stays untouched. Each
function returns the `<svg …>` element as text (no XML prolog, no metadata, text kept as SVG
`<text>` so the file stays small), or None when no variant has the figures the plot needs: a
plot is never drawn with empty axes.

The quality axis is the one the recommendation used (mean KL(baseline ‖ variant) when every ok
variant has it, the baseline's being 0, else perplexity), and the Pareto fronts are the
recommendation's when one was computed, so the plots agree with the recommendation section.
Perplexity's error bars are the paired interval of its difference from the baseline (the one
the front is judged with), and a variant on the front only because its quality difference is
within the intervals (a tie, see `quantbench.stats.pareto`) is ringed with a dotted line and
labelled with the variants it ties with.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from quantbench.recommend import perplexity_figure
from quantbench.results import (
    BASELINE_SCHEMES,
    SensitivityRecord,
    StudyResults,
    VariantResult,
    find_baseline,
    weights_bytes,
)
from quantbench.stats.pareto import UncertainPoint, uncertain_pareto_front
from quantbench.units import MIB

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

BarMetric = Literal["perplexity", "kl_mean", "top1_agreement", "decode_ms"]
BAR_METRICS: tuple[BarMetric, ...] = ("perplexity", "kl_mean", "top1_agreement", "decode_ms")
QualityMetric = Literal["kl_mean", "perplexity"]

EMULATED_LABEL = "emulated (not real kernels)"
NATIVE_LABEL = "native kernels"
EMULATED_SUBTITLE = "Warning: hollow points are emulated speed, not real low-precision kernels"
EMULATED_BAR_SUBTITLE = "Warning: hatched bars are emulated speed, not real low-precision kernels"
QUALITY_LABELS: dict[str, str] = {
    "kl_mean": "mean KL(baseline ‖ variant), nats/token",
    "perplexity": "perplexity (bars: paired 95% interval vs the baseline)",
}

# Colour-blind friendly (Okabe–Ito), one per variant in study order, the same in every plot.
PALETTE = (
    "#0072B2",
    "#D55E00",
    "#009E73",
    "#CC79A7",
    "#E69F00",
    "#56B4E9",
    "#8C564B",
    "#000000",
    "#F0E442",
)
FRONT_COLOR = "#333333"
WARN_COLOR = "#9A5B00"
FIGSIZE = (7.0, 4.4)

_METADATA = re.compile(r"<metadata>.*?</metadata>\s*", re.DOTALL)
_ID = re.compile(r'\bid="([^"]+)"')


@dataclass(frozen=True)
class _Point:
    """One variant's figures: x and y with optional error bars (as interval bounds)."""

    name: str
    color: str
    x: float
    y: float
    x_low: float | None = None
    x_high: float | None = None
    y_low: float | None = None
    y_high: float | None = None
    emulated: bool = False


@dataclass(frozen=True)
class _Bar:
    name: str
    color: str
    value: float
    low: float | None
    high: float | None
    emulated: bool = False


Figures = tuple[float, float | None, float | None]
"""A figure with the bounds of its interval (or None, None)."""


# --------------------------------------------------------------------------------------
# Figures read from the records
# --------------------------------------------------------------------------------------


def _colors(results: StudyResults) -> dict[str, str]:
    return {v.name: PALETTE[i % len(PALETTE)] for i, v in enumerate(results.variants)}


def _finite(*values: float | None) -> bool:
    return all(v is None or math.isfinite(v) for v in values)


def _kl(variant: VariantResult, baseline: VariantResult | None) -> Figures | None:
    div = variant.metrics.divergence
    if div is not None:
        return div.kl_mean.estimate, div.kl_mean.low, div.kl_mean.high
    return (0.0, None, None) if variant is baseline else None


def _ppl(variant: VariantResult, baseline: VariantResult | None) -> Figures | None:
    return perplexity_figure(variant, baseline)


def _ok(results: StudyResults) -> list[VariantResult]:
    return [v for v in results.variants if v.status == "ok"]


def quality_metric(results: StudyResults) -> QualityMetric:
    """The quality axis: the recommendation's, else KL when every ok variant has it."""
    rec = results.recommendation
    if rec is not None and rec.quality_metric in ("kl_mean", "perplexity"):
        return "kl_mean" if rec.quality_metric == "kl_mean" else "perplexity"
    ok = _ok(results)
    kls = [_kl(v, find_baseline(results, v)) for v in ok]
    if ok and all(k is not None and _finite(k[0]) for k in kls):
        return "kl_mean"
    return "perplexity"


def _quality_getter(results: StudyResults) -> Callable[[VariantResult], Figures | None]:
    if quality_metric(results) == "kl_mean":
        return lambda v: _kl(v, find_baseline(results, v))
    return lambda v: _ppl(v, find_baseline(results, v))


def _decode_b1(variant: VariantResult) -> tuple[float, float, bool] | None:
    """Median and p90 decode seconds per token at batch 1, and whether it is emulated."""
    speed = variant.metrics.speed
    if speed is None:
        return None
    point = next((p for p in speed.points if p.batch_size == 1), None)
    if point is None:
        return None
    return point.tpot_s.median, point.tpot_s.p90, speed.execution_mode == "emulated"


# --------------------------------------------------------------------------------------
# Figure plumbing
# --------------------------------------------------------------------------------------


def _figure() -> tuple[Figure, Axes]:
    """A fresh figure on its own Agg canvas; nothing registered with pyplot."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=FIGSIZE, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.grid(True, color="#dddddd", linewidth=0.6)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    return fig, ax


def _to_svg(fig: Figure, salt: str, label: str) -> str:
    """The figure as an `<svg>` element: no prolog, no metadata, ids unique to `salt`."""
    import matplotlib

    buf = io.StringIO()
    with matplotlib.rc_context({"svg.hashsalt": f"quantbench-{salt}", "svg.fonttype": "none"}):
        fig.savefig(buf, format="svg", metadata={"Date": None})
    text = buf.getvalue()
    text = _METADATA.sub("", text[text.index("<svg") :]).strip()
    text = _scope_ids(text, f"qb-{salt}-")
    label = label.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;")
    return text.replace("<svg ", f'<svg class="plot" role="img" aria-label="{label}" ', 1)


def _scope_ids(svg: str, prefix: str) -> str:
    """Prefix every element id (and each `#id` reference to it) not already under `qb-`.

    Matplotlib numbers its groups per figure (`figure_1`, `axes_1`, …), so several plots
    inlined in one page would otherwise repeat ids.
    """
    ids = {i for i in _ID.findall(svg) if not i.startswith("qb-")}
    if not ids:
        return svg

    def scoped(match: re.Match[str]) -> str:
        name = match.group(2)
        return f"{match.group(1)}{prefix}{name}{match.group(3)}" if name in ids else match.group(0)

    svg = re.sub(r'(\bid=")([^"]+)(")', scoped, svg)
    svg = re.sub(r'(href="#)([^"]+)(")', scoped, svg)
    return re.sub(r"(url\(#)([^)]+)(\))", scoped, svg)


def _errors(
    values: Sequence[float], lows: Sequence[float | None], highs: Sequence[float | None]
) -> list[list[float]]:
    """Asymmetric error-bar lengths for matplotlib (2 × n), 0 where a bound is missing."""
    below = [
        max(0.0, v - lo) if lo is not None else 0.0 for v, lo in zip(values, lows, strict=True)
    ]
    above = [
        max(0.0, hi - v) if hi is not None else 0.0 for v, hi in zip(values, highs, strict=True)
    ]
    return [below, above]


def _scatter(ax: Axes, points: Sequence[_Point], plot: str) -> None:
    """One labelled point per variant with its error bars; emulated points hollow.

    Each point's marker is an SVG group with id `qb-<plot>-data-<i>`, so a check of the
    rendered page can tell drawn data from empty axes.
    """
    for i, p in enumerate(points):
        xerr = (
            _errors([p.x], [p.x_low], [p.x_high])
            if p.x_low is not None or p.x_high is not None
            else None
        )
        yerr = (
            _errors([p.y], [p.y_low], [p.y_high])
            if p.y_low is not None or p.y_high is not None
            else None
        )
        container = ax.errorbar(
            [p.x],
            [p.y],
            xerr=xerr,
            yerr=yerr,
            fmt="o",
            markersize=8,
            markeredgewidth=1.8,
            color=p.color,
            markerfacecolor="white" if p.emulated else p.color,
            ecolor=p.color,
            elinewidth=1.2,
            capsize=3,
            zorder=4,
        )
        if container.lines[0] is not None:
            container.lines[0].set_gid(f"qb-{plot}-data-{i}")
        ax.annotate(
            p.name,
            (p.x, p.y),
            xytext=(7, 6),
            textcoords="offset points",
            fontsize=9,
            color="#222222",
            zorder=5,
        )
    ax.margins(x=0.18, y=0.15)


def _front(
    ax: Axes,
    points: Sequence[_Point],
    names: Sequence[str],
    plot: str,
    ties: dict[str, list[str]],
) -> bool:
    """Draw the Pareto front through the named points (a step line, rings; tied points with a
    dotted ring and a "tie with …" label); False if none."""
    on_front = sorted((p for p in points if p.name in set(names)), key=lambda p: (p.x, p.y))
    if not on_front:
        return False
    xs = [p.x for p in on_front]
    ys = [p.y for p in on_front]
    (step,) = ax.step(
        xs, ys, where="post", color=FRONT_COLOR, linestyle="--", linewidth=1.2, zorder=2
    )
    step.set_gid(f"qb-{plot}-front")
    solid = [p for p in on_front if p.name not in ties]
    tied = [p for p in on_front if p.name in ties]
    ax.scatter(
        [p.x for p in solid],
        [p.y for p in solid],
        s=260,
        facecolors="none",
        edgecolors=FRONT_COLOR,
        linewidths=1.3,
        zorder=3,
    )
    if tied:
        rings = ax.scatter(
            [p.x for p in tied],
            [p.y for p in tied],
            s=260,
            facecolors="none",
            edgecolors=FRONT_COLOR,
            linewidths=1.3,
            linestyles=":",
            zorder=3,
        )
        rings.set_gid(f"qb-{plot}-ties")
        for p in tied:
            ax.annotate(
                f"tie with {', '.join(ties[p.name])}",
                (p.x, p.y),
                xytext=(7, -11),
                textcoords="offset points",
                fontsize=7.5,
                color="#555555",
                zorder=5,
            )
    return True


def _computed_front(points: Sequence[_Point]) -> tuple[list[str], dict[str, list[str]]]:
    """The uncertainty-aware front of `points` (no recommendation saved): names and ties."""
    uncertain = [
        UncertainPoint(
            p.x,
            p.y,
            min(p.y, p.y_low if p.y_low is not None else p.y),
            max(p.y, p.y_high if p.y_high is not None else p.y),
        )
        for p in points
    ]
    statuses = uncertain_pareto_front(uncertain)
    names = [points[i].name for i, st in enumerate(statuses) if st.on_front]
    ties = {
        points[i].name: [points[j].name for j in st.tied_with]
        for i, st in enumerate(statuses)
        if st.status == "tie"
    }
    return names, ties


PREDICTED_LABEL = "predicted by the mixed-precision search (dotted: to its measured point)"


def _legend(
    ax: Axes,
    front: bool,
    native: bool,
    emulated: bool,
    tie: bool = False,
    predicted: bool = False,
) -> None:
    from matplotlib.lines import Line2D

    handles = []
    if predicted:
        handles.append(
            Line2D(
                [],
                [],
                color="#555555",
                marker="D",
                markerfacecolor="none",
                linestyle="none",
                label=PREDICTED_LABEL,
            )
        )
    if front:
        handles.append(
            Line2D(
                [],
                [],
                color=FRONT_COLOR,
                linestyle="--",
                marker="o",
                markersize=12,
                markerfacecolor="none",
                label="Pareto front (lower-left is better)",
            )
        )
    if tie:
        handles.append(
            Line2D(
                [],
                [],
                color=FRONT_COLOR,
                linestyle="none",
                marker="o",
                markersize=12,
                markerfacecolor="none",
                markeredgewidth=1.0,
                label="tie: on the front only within the quality intervals",
            )
        )
    if native and emulated:
        handles.append(
            Line2D([], [], color="#555555", marker="o", linestyle="none", label=NATIVE_LABEL)
        )
    if emulated:
        handles.append(
            Line2D(
                [],
                [],
                color="#555555",
                marker="o",
                markerfacecolor="white",
                markeredgewidth=1.8,
                linestyle="none",
                label=EMULATED_LABEL,
            )
        )
    if handles:
        ax.legend(handles=handles, loc="best", fontsize=8.5, framealpha=0.9)


# --------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------


def size_vs_quality(results: StudyResults) -> str | None:
    """Weights on disk (MiB) against quality, the (size, quality) Pareto front drawn.

    None when no ok variant has both a size and the quality figure.
    """
    colors = _colors(results)
    quality = _quality_getter(results)
    points: list[_Point] = []
    for variant in _ok(results):
        size = weights_bytes(variant)
        q = quality(variant)
        if size is None or q is None or not _finite(q[0], q[1], q[2]):
            continue
        points.append(
            _Point(variant.name, colors[variant.name], size / MIB, q[0], y_low=q[1], y_high=q[2])
        )
    if not points:
        return None
    rec = results.recommendation
    if rec is not None:
        names, ties = list(rec.pareto_size_quality), rec.pareto_size_ties
    else:
        names, ties = _computed_front(points)
    metric = quality_metric(results)
    fig, ax = _figure()
    front = _front(ax, points, names, "size-quality", ties)
    _scatter(ax, points, "size-quality")
    predicted = metric == "kl_mean" and _predicted_points(ax, results, points, colors)
    _legend(ax, front, native=False, emulated=False, tie=front and bool(ties), predicted=predicted)
    ax.set_title("Weights on disk vs quality", loc="left", fontsize=11, fontweight="bold")
    ax.set_xlabel("weights on disk (MiB)")
    ax.set_ylabel(f"{QUALITY_LABELS[metric]}\n(lower is better)")
    return _to_svg(fig, "size-quality", "Weights on disk against quality, one point per variant")


def _predicted_points(
    ax: Axes, results: StudyResults, points: Sequence[_Point], colors: dict[str, str]
) -> bool:
    """For each mixed-precision variant drawn, its point as the search predicted it (size,
    KL as the sum of per-group increases), joined to the measured one: the additive
    model's error, seen. Whether any was drawn."""
    measured = {point.name: point for point in points}
    drawn = False
    for variant in _ok(results):
        search = variant.mixed
        point = measured.get(variant.name)
        if search is None or point is None:
            continue
        x, y = search.predicted_size_bytes / MIB, search.predicted_kl
        ax.plot([x, point.x], [y, point.y], linestyle=":", color=colors[variant.name], linewidth=1)
        ax.plot(
            [x],
            [y],
            marker="D",
            markersize=7,
            markerfacecolor="none",
            markeredgecolor=colors[variant.name],
            linestyle="none",
        )
        drawn = True
    return drawn


def sensitivity_heatmap(record: SensitivityRecord) -> str | None:
    """The sensitivity screen as heatmaps, decoder layers × kind of projection, one panel
    per candidate (bf16 has none: it changes nothing), on one logarithmic colour scale so
    panels compare. None when no group belongs to a decoder layer."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import LogNorm
    from matplotlib.figure import Figure

    groups = [g for g in record.groups if g.layer is not None]
    panels = [i for i, name in enumerate(record.candidates) if name not in BASELINE_SCHEMES]
    if not groups or not panels:
        return None
    kinds = list(dict.fromkeys(g.kind for g in groups))  # model order: qkv, o, gate_up, down
    layers = 1 + max(g.layer for g in groups if g.layer is not None)
    grids = []
    for panel in panels:
        grid = np.full((layers, len(kinds)), np.nan)
        for group in groups:
            assert group.layer is not None
            grid[group.layer, kinds.index(group.kind)] = group.kl_increase[panel]
        grids.append(grid)
    positive = [v for grid in grids for v in grid[np.isfinite(grid)] if v > 0]
    if not positive:
        return None
    norm = LogNorm(vmin=min(positive), vmax=max(positive))
    fig = Figure(figsize=(2.2 + 1.9 * len(panels), 1.6 + 0.16 * layers), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    image = None
    for ax, panel, grid in zip(axes, panels, grids, strict=True):
        shown = np.where(grid > 0, grid, np.nan)
        image = ax.imshow(shown, aspect="auto", cmap="viridis", norm=norm, interpolation="none")
        ax.set_title(record.candidates[panel], fontsize=10, loc="left")
        ax.set_xticks(range(len(kinds)), kinds, fontsize=8, rotation=30)
        ax.set_yticks(range(0, layers, max(1, layers // 10)))
        ax.tick_params(axis="y", labelsize=8)
        ax.set_xlabel("projection")
    axes[0].set_ylabel("decoder layer")
    assert image is not None
    bar = fig.colorbar(image, ax=list(axes), shrink=0.9)
    bar.set_label("KL added, nats/token (log scale)", fontsize=8)
    fig.suptitle(
        "Sensitivity: KL added by quantizing one group alone", x=0.02, ha="left", fontsize=11
    )
    return _to_svg(fig, "sensitivity", "Per-group sensitivity heatmap, one panel per candidate")


def speed_vs_quality(results: StudyResults) -> str | None:
    """Decode time per token at batch 1 (ms) against quality; emulated points hollow.

    The front is drawn only when speed can be judged (no emulated figure), as in the
    recommendation. None when no ok variant has both figures.
    """
    colors = _colors(results)
    quality = _quality_getter(results)
    points: list[_Point] = []
    for variant in _ok(results):
        decode = _decode_b1(variant)
        q = quality(variant)
        if decode is None or q is None or not _finite(decode[0], decode[1], *q):
            continue
        median, p90, emulated = decode
        points.append(
            _Point(
                variant.name,
                colors[variant.name],
                median * 1000,
                q[0],
                x_low=None,
                x_high=p90 * 1000,
                y_low=q[1],
                y_high=q[2],
                emulated=emulated,
            )
        )
    if not points:
        return None
    any_emulated = any(p.emulated for p in points)
    rec = results.recommendation
    names: Sequence[str] = []
    ties: dict[str, list[str]] = {}
    if rec is not None:
        if rec.speed_judged:
            names, ties = rec.pareto_speed_quality, rec.pareto_speed_ties
    elif not any_emulated:
        names, ties = _computed_front(points)
    metric = quality_metric(results)
    fig, ax = _figure()
    front = _front(ax, points, names, "speed-quality", ties)
    _scatter(ax, points, "speed-quality")
    _legend(
        ax,
        front,
        native=any(not p.emulated for p in points),
        emulated=any_emulated,
        tie=front and bool(ties),
    )
    title = "Decode speed vs quality"
    if any_emulated:
        fig.suptitle(title, x=0.02, ha="left", fontsize=11, fontweight="bold")
        ax.set_title(EMULATED_SUBTITLE, loc="left", fontsize=8.5, color=WARN_COLOR)
    else:
        ax.set_title(title, loc="left", fontsize=11, fontweight="bold")
    ax.set_xlabel("decode time per token at batch 1, median (ms); whisker to p90")
    ax.set_ylabel(f"{QUALITY_LABELS[metric]}\n(lower is better)")
    return _to_svg(fig, "speed-quality", "Decode time per token against quality")


@dataclass(frozen=True)
class _BarSpec:
    title: str
    ylabel: str
    read: Callable[[VariantResult], tuple[float, float | None, float | None, bool] | None]
    text: Callable[[float], str]


def _ppl_bar(v: VariantResult) -> tuple[float, float | None, float | None, bool] | None:
    ppl = v.metrics.perplexity
    if ppl is None:
        return None
    return ppl.perplexity.estimate, ppl.perplexity.low, ppl.perplexity.high, False


def _kl_bar(v: VariantResult) -> tuple[float, float | None, float | None, bool] | None:
    div = v.metrics.divergence
    if div is None:
        return None
    return div.kl_mean.estimate, div.kl_mean.low, div.kl_mean.high, False


def _top1_bar(v: VariantResult) -> tuple[float, float | None, float | None, bool] | None:
    div = v.metrics.divergence
    if div is None:
        return None
    top1 = div.top1_agreement
    return top1.estimate * 100, top1.low * 100, top1.high * 100, False


def _decode_bar(v: VariantResult) -> tuple[float, float | None, float | None, bool] | None:
    decode = _decode_b1(v)
    if decode is None:
        return None
    median, p90, emulated = decode
    return median * 1000, None, p90 * 1000, emulated


_BARS: dict[BarMetric, _BarSpec] = {
    "perplexity": _BarSpec(
        "Perplexity", "perplexity, 95% CI (lower is better)", _ppl_bar, lambda x: f"{x:.2f}"
    ),
    "kl_mean": _BarSpec(
        "Mean KL(baseline ‖ variant)",
        "nats/token, 95% CI (lower is better)",
        _kl_bar,
        lambda x: f"{x:.4f}" if abs(x) < 0.1 else f"{x:.3f}",
    ),
    "top1_agreement": _BarSpec(
        "Top-1 agreement with the baseline",
        "% of tokens, 95% CI (higher is better)",
        _top1_bar,
        lambda x: f"{x:.1f}%",
    ),
    "decode_ms": _BarSpec(
        "Decode time per token at batch 1",
        "ms/token, median; whisker to p90",
        _decode_bar,
        lambda x: f"{x:.1f} ms",
    ),
}


def bar_title(metric: BarMetric) -> str:
    """The title of `metric_bars(results, metric)`; KeyError for an unknown metric."""
    return _BARS[metric].title


def metric_bars(results: StudyResults, metric: BarMetric) -> str | None:
    """One bar per variant that has `metric`, with its interval as error bars.

    `metric` is one of `BAR_METRICS`: perplexity (CI), kl_mean (CI), top1_agreement (CI, %),
    decode_ms (median at batch 1, whisker up to the p90; emulated bars hatched). None when no
    variant has the metric. Raises ValueError for an unknown metric.
    """
    if metric not in _BARS:
        raise ValueError(f"unknown metric {metric!r}; expected one of {', '.join(BAR_METRICS)}")
    spec = _BARS[metric]
    colors = _colors(results)
    bars: list[_Bar] = []
    for variant in results.variants:
        read = spec.read(variant)
        if read is None or not _finite(*read[:3]):
            continue
        value, low, high, emulated = read
        bars.append(_Bar(variant.name, colors[variant.name], value, low, high, emulated))
    if not bars:
        return None
    fig, ax = _figure()
    ax.grid(False, axis="x")
    xs = list(range(len(bars)))
    values = [b.value for b in bars]
    for x, b in zip(xs, bars, strict=True):
        drawn = ax.bar(
            [x],
            [b.value],
            width=0.62,
            color="white" if b.emulated else b.color,
            edgecolor=b.color,
            linewidth=1.6,
            hatch="///" if b.emulated else None,
            zorder=2,
        )
        drawn.patches[0].set_gid(f"qb-bars-{metric}-data-{x}")
    ax.errorbar(
        xs,
        values,
        yerr=_errors(values, [b.low for b in bars], [b.high for b in bars]),
        fmt="none",
        ecolor="#222222",
        elinewidth=1.2,
        capsize=4,
        zorder=3,
    )
    for x, b in zip(xs, bars, strict=True):
        top = max(b.value, b.high if b.high is not None else b.value)
        ax.annotate(
            spec.text(b.value),
            (x, top),
            xytext=(0, 4),
            textcoords="offset points",
            ha="center",
            fontsize=8.5,
            color="#222222",
        )
    ax.set_xticks(
        xs,
        [b.name for b in bars],
        rotation=15 if len(bars) > 3 else 0,
        ha="right" if len(bars) > 3 else "center",
    )
    ax.set_ylabel(spec.ylabel)
    ax.margins(y=0.12)
    ax.set_ylim(bottom=min(0.0, *values))
    if any(b.emulated for b in bars):
        fig.suptitle(spec.title, x=0.02, ha="left", fontsize=11, fontweight="bold")
        ax.set_title(EMULATED_BAR_SUBTITLE, loc="left", fontsize=8.5, color=WARN_COLOR)
        from matplotlib.patches import Patch

        fig.legend(
            handles=[
                Patch(facecolor="white", edgecolor="#555555", hatch="///", label=EMULATED_LABEL)
            ],
            loc="outside lower right",
            fontsize=8.5,
            frameon=False,
        )
    else:
        ax.set_title(spec.title, loc="left", fontsize=11, fontweight="bold")
    return _to_svg(fig, f"bars-{metric}", f"{spec.title}, one bar per variant")
