"""The default quality budget, `--no-default-constraints`, and the decision columns of every
table, on hand-made records with the default study's figures (no model)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from rich.console import Console
from tests.conftest import run_cli
from tests.records import size_record

from quantbench.config import StudyConfig
from quantbench.recommend import (
    DEFAULT_MAX_KL,
    DEFAULT_MAX_PPL_INCREASE_PCT,
    applied_constraints,
    recommend,
)
from quantbench.report.csv_table import render_csv
from quantbench.report.headline import headline_rows
from quantbench.report.markdown import render_markdown
from quantbench.report.terminal import results_table
from quantbench.results import (
    Constraints,
    DivergenceRecord,
    Interval,
    PerplexityRecord,
    StudyResults,
    VariantMetrics,
    VariantResult,
)
from quantbench.study_files import save_results

MIB = 1 << 20
BASE_PPL = 15.79


def _perplexity(ppl: float, baseline: bool) -> PerplexityRecord:
    delta = (
        None
        if baseline
        else Interval(
            estimate=ppl - BASE_PPL, low=ppl - BASE_PPL - 0.05, high=ppl - BASE_PPL + 0.05
        )
    )
    return PerplexityRecord(
        corpus="builtin",
        corpus_key="k",
        tokens_sha256="0" * 64,
        window=512,
        stride=512,
        n_windows=64,
        n_tokens=32704,
        nll_mean=2.76,
        perplexity=Interval(estimate=ppl, low=ppl - 0.4, high=ppl + 0.4),
        delta_vs_baseline=delta,
        ratio_vs_baseline=None if baseline else ppl / BASE_PPL,
    )


def _divergence(kl: float) -> DivergenceRecord:
    return DivergenceRecord(
        n_tokens=32704,
        top_k=256,
        kl_mean=Interval(estimate=kl, low=kl * 0.965, high=kl * 1.035),
        kl_median=kl / 3,
        kl_p99=kl * 8,
        kl_max=kl * 40,
        top1_agreement=Interval(estimate=0.9, low=0.89, high=0.91),
        ref_prob_delta={"mean": -0.01},
    )


def _variant(
    name: str, scheme: str, mib: float, ppl: float | None, kl: float | None
) -> VariantResult:
    return VariantResult(
        name=name,
        scheme=scheme,
        status="ok",
        metrics=VariantMetrics(
            size=size_record(1).model_copy(update={"weights_bytes": int(mib * MIB)}),
            perplexity=_perplexity(ppl, scheme == "bf16") if ppl is not None else None,
            divergence=_divergence(kl) if kl is not None else None,
        ),
    )


def default_study(with_ppl: bool = True, with_kl: bool = True) -> StudyResults:
    """The default study's figures (README): w4a16-gptq +21% perplexity, KL 0.19."""

    def v(name: str, mib: float, ppl: float, kl: float | None) -> VariantResult:
        return _variant(
            name, name, mib, ppl if with_ppl else None, kl if with_kl and kl is not None else None
        )

    return StudyResults(
        quantbench_version="0.1.0",
        created_at="2025-01-01T00:00:00+00:00",
        model={"spec": "builtin:smollm2-135m-instruct"},
        config={},
        variants=[
            v("bf16", 256.6, BASE_PPL, None),
            v("fp8-dynamic", 155.7, 16.18, 0.0292),
            v("w4a16-gptq", 107.9, 19.17, 0.1922),
            v("w8a8-int8", 155.7, 16.00, 0.0144),
        ],
    )


def test_default_budget_rejects_w4a16_and_says_which_limit() -> None:
    rec = recommend(default_study(), Constraints(default_budget=True))
    assert rec.budget == "default"
    assert rec.constraints.max_kl == DEFAULT_MAX_KL == 0.05
    assert rec.constraints.max_ppl_increase_pct == DEFAULT_MAX_PPL_INCREASE_PCT == 5.0
    assert rec.constraints.non_inferiority_margin is None  # no tasks ran
    w4 = next(v for v in rec.verdicts if v.variant == "w4a16-gptq")
    assert not w4.acceptable
    assert w4.broken == [
        "KL 0.192 nats/token > max 0.05",
        "perplexity increase 21.41% > max 5%",
    ]
    assert [v.variant for v in rec.verdicts if v.acceptable] == [
        "bf16",
        "fp8-dynamic",
        "w8a8-int8",
    ]
    first_sentence = rec.summary.split(". ")[0]
    assert first_sentence.startswith(
        "Under quantbench's default quality budget (max KL 0.05 nats/token, "
        "max perplexity increase 5%; --no-default-constraints turns it off)"
    )
    # same bytes as fp8-dynamic: the better KL wins the tie on size
    assert "smallest on disk is w8a8-int8 (155.7 MiB)" in first_sentence
    assert "Not acceptable: w4a16-gptq breaks KL 0.192 nats/token > max 0.05" in rec.summary


def test_no_default_constraints_gives_the_old_behaviour() -> None:
    rec = recommend(default_study(), Constraints(default_budget=False))
    assert rec.budget == "none"
    assert all(v.acceptable for v in rec.verdicts)
    assert rec.summary.startswith("No constraints set, so every ok variant is acceptable")
    assert "smallest on disk is w4a16-gptq (107.9 MiB)" in rec.summary


def test_a_limit_the_user_sets_replaces_the_whole_default() -> None:
    rec = recommend(default_study(), Constraints(max_kl=0.25, default_budget=True))
    assert rec.budget == "set" and rec.constraints.max_ppl_increase_pct is None
    assert all(v.acceptable for v in rec.verdicts)
    assert rec.summary.startswith("Under max KL 0.25 nats/token: smallest on disk is w4a16-gptq")


def test_default_budget_applies_only_what_was_measured() -> None:
    only_ppl, _ = applied_constraints(
        default_study(with_kl=False), Constraints(default_budget=True)
    )
    assert only_ppl.max_kl is None and only_ppl.max_ppl_increase_pct == 5.0
    only_kl, _ = applied_constraints(
        default_study(with_ppl=False), Constraints(default_budget=True)
    )
    assert only_kl.max_kl == 0.05 and only_kl.max_ppl_increase_pct is None
    rec = recommend(default_study(with_kl=False), Constraints(default_budget=True))
    assert [v.variant for v in rec.verdicts if v.acceptable] == ["bf16", "fp8-dynamic", "w8a8-int8"]
    # neither measured: the quality of a variant is unknown, so only the baseline passes
    blind = recommend(default_study(False, False), Constraints(default_budget=True))
    assert [v.variant for v in blind.verdicts if v.acceptable] == ["bf16"]
    assert "cannot be checked" in blind.summary and "KL unknown" in blind.summary


def test_studies_default_to_the_budget() -> None:
    decision = StudyConfig().decision
    assert decision.default_budget is True
    constraints = Constraints(**decision.model_dump())
    assert constraints.default_budget and applied_constraints(default_study(), constraints)[1] == (
        "default"
    )
    off = StudyConfig.model_validate({"decision": {"default_budget": False}}).decision
    assert Constraints(**off.model_dump()).default_budget is False


def _decided() -> StudyResults:
    study = default_study()
    return study.model_copy(
        update={"recommendation": recommend(study, Constraints(default_budget=True))}
    )


def test_decision_and_percent_columns_in_every_table() -> None:
    study = _decided()
    rows = {r.name: r for r in headline_rows(study)}
    assert rows["w4a16-gptq"].text("ppl_increase") == "+21.4 [+21.1, +21.7]"
    assert rows["bf16"].text("ppl_increase") == "+0.0"
    assert rows["w4a16-gptq"].text("acceptable") == "no"
    assert rows["w8a8-int8"].text("acceptable") == "yes"
    assert rows["w8a8-int8"].text("recommended") == "smallest on disk"
    assert rows["w4a16-gptq"].text("broken") == (
        "KL 0.192 nats/token > max 0.05; perplexity increase 21.41% > max 5%"
    )
    assert rows["fp8-dynamic"].text("broken") == "none"

    table = list(csv.DictReader(io.StringIO(render_csv(study))))
    by_name = {r["variant"]: r for r in table}
    assert by_name["w4a16-gptq"]["acceptable"] == "0" and by_name["bf16"]["acceptable"] == "1"
    assert by_name["w8a8-int8"]["recommended"] == "smallest on disk"
    assert by_name["w4a16-gptq"]["broken_constraints"].startswith("KL 0.192")
    assert float(by_name["w4a16-gptq"]["ppl_increase_pct"]) == pytest.approx(
        100 * (19.17 / BASE_PPL - 1)
    )

    report = render_markdown(study)
    assert "| acceptable | recommended for | constraints broken |" in report
    assert "Constraints: quantbench's default quality budget: max KL 0.05 nats/token" in report

    console = Console(width=250, record=True)
    console.print(results_table(study))
    text = console.export_text()
    assert "Δppl %" in text and "+21.4" in text
    assert "no: KL 0.192 nats/token > max 0.05; perplexity increase 21.41% > max 5%" in text
    assert "smallest on disk" in text


def test_cli_report_applies_the_budget_and_the_flag_turns_it_off(tmp_path: Path) -> None:
    save_results(tmp_path, default_study(), model_cards=False)
    default = run_cli("report", str(tmp_path))
    assert default.returncode == 0, default.stderr[-2000:]
    saved = json.loads((tmp_path / "results.json").read_text())["recommendation"]
    assert saved["budget"] == "default"
    w4 = next(v for v in saved["verdicts"] if v["variant"] == "w4a16-gptq")
    assert not w4["acceptable"]
    assert "Under quantbench's default quality budget" in (tmp_path / "report.md").read_text()

    off = run_cli("report", str(tmp_path), "--no-default-constraints")
    assert off.returncode == 0, off.stderr[-2000:]
    saved = json.loads((tmp_path / "results.json").read_text())["recommendation"]
    assert saved["budget"] == "none"
    assert all(v["acceptable"] for v in saved["verdicts"])
