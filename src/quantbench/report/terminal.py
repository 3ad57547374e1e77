"""The table printed at the end of `quantbench run` and by `quantbench report`."""

from __future__ import annotations

from rich.table import Table

from quantbench.results import StudyResults

MIB = float(1 << 20)
GIB = float(1 << 30)


def _options_text(options: dict[str, object]) -> str:
    shown = {k: v for k, v in options.items() if k not in ("ignore", "on_indivisible")}
    return ", ".join(f"{k}={v}" for k, v in shown.items()) or "–"


def results_table(results: StudyResults) -> Table:
    baseline = next(
        (v for v in results.variants if v.scheme in ("bf16", "fp16") and v.disk_bytes), None
    )
    table = Table(title=f"quantbench · {results.model.get('spec')}", title_justify="left")
    table.add_column("variant", style="bold")
    table.add_column("scheme")
    table.add_column("options")
    table.add_column("weights on disk", justify="right")
    table.add_column("vs baseline", justify="right")
    table.add_column("quantize time", justify="right")
    table.add_column("peak memory", justify="right")
    table.add_column("status")
    for variant in results.variants:
        size = f"{variant.disk_bytes / MIB:,.1f} MiB" if variant.disk_bytes else "–"
        ratio = (
            f"{variant.disk_bytes / baseline.disk_bytes:.2f}×"
            if baseline and baseline.disk_bytes and variant.disk_bytes
            else "–"
        )
        quant = variant.quantization
        table.add_row(
            variant.name,
            variant.scheme,
            _options_text(variant.options),
            size,
            ratio,
            f"{quant.wall_s:,.1f} s" if quant else "–",
            f"{quant.peak_rss_bytes / GIB:.2f} GiB" if quant else "–",
            "[green]ok" if variant.status == "ok" else f"[red]failed: {variant.error}",
        )
    return table
