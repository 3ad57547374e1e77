"""Mutation testing of the pure modules with mutmut: does the suite catch broken code?

    .venv/bin/python benchmarks/mutation.py TARGET [TARGET ...] [--rev REV] [--max-children N]
    .venv/bin/python benchmarks/mutation.py --summarize-only TARGET ...

TARGET is one of: content_key, preflight, config, recommend, stats (smallest first). mutmut
(`.venv/bin/pip install mutmut`, 3.x) works on a snapshot of commit REV (default HEAD:
`git archive` of `src/` and the target's fast unit-test files, under
/tmp/quantbench-mutation/TARGET), so the run scores exactly one commit, whatever is being
edited in the checkout, and neither the checkout nor its pyproject.toml is touched. Scored:
the functions and methods the target's module(s) have at REV (the summary names the commit
and lists them; content_key scores only `canonical_json` and `content_key`). Each mutant
runs only the tests that reach its function. A mutant no test reaches counts as surviving.
The summary, with every surviving mutant's diff and why each is equivalent (EQUIVALENT
below) or marked UNEXPLAINED, goes to results/mutation_TARGET.md. Run by hand, never in the
test suite: minutes per target on two cores.
"""

from __future__ import annotations

import argparse
import ast
import datetime as dt
import difflib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
WORK = Path("/tmp/quantbench-mutation")


@dataclass(frozen=True)
class Target:
    """Modules to mutate, the functions in scope (None: all of them), the tests that judge."""

    modules: tuple[str, ...]
    tests: tuple[str, ...]
    functions: tuple[str, ...] | None = None
    floor: float = 0.75
    pytest_args: tuple[str, ...] = ()
    """Extra pytest arguments for every test run (e.g. a -k that leaves out slow tests)."""


TARGETS: dict[str, Target] = {
    "content_key": Target(
        modules=("src/quantbench/store.py",),
        functions=("canonical_json", "content_key"),
        tests=("tests/test_store.py", "tests/test_mutants_pure.py"),
    ),
    "preflight": Target(
        modules=("src/quantbench/preflight.py", "src/quantbench/schemes/grouping.py"),
        tests=("tests/test_schemes.py", "tests/test_mutants_pure.py"),
    ),
    "config": Target(
        modules=("src/quantbench/config.py",),
        tests=(
            "tests/test_config.py",
            "tests/test_matrix.py::test_grids_expand_into_named_variants",
            "tests/test_matrix.py::test_bad_grid_values_are_reported_by_position",
            "tests/test_matrix.py::test_model_lists_are_checked_and_labelled",
            "tests/test_mutants_config.py",
        ),
    ),
    "recommend": Target(
        modules=("src/quantbench/recommend.py",),
        tests=(
            "tests/test_recommend.py",
            "tests/test_quality_budget.py",
            "tests/test_pareto_ties.py",
            "tests/test_recovery.py",
            "tests/test_mutants_recommend.py",
        ),
        floor=0.85,
    ),
    "stats": Target(
        modules=(
            "src/quantbench/stats/_checks.py",
            "src/quantbench/stats/intervals.py",
            "src/quantbench/stats/divergence.py",
            "src/quantbench/stats/text.py",
        ),
        # What quantbench.stats held before it became a package by topic; llama.cpp's
        # divergence report (stats/divergence.py's window statistics), the task statistics
        # and the Pareto front are judged by their own golden tests, not scored here.
        functions=(
            "_as_1d_finite",
            "_check_confidence",
            "_check_n_resamples",
            "_check_logprob_pair",
            "perplexity",
            "_percentile_key",
            "percentiles",
            "spread",
            "_apply_statistic",
            "_resample_indices",
            "_percentile_interval",
            "bootstrap_ci",
            "paired_bootstrap_diff_ci",
            "ratio_bootstrap_ci",
            "perplexity_ci",
            "mcnemar_exact_p",
            "wilson_interval",
            "_ppl_diff",
            "paired_window_ppl_diff_ci",
            "kl_divergence_per_token",
            "_kl_normalised_rows",
            "top1_agreement",
            "reference_prob_delta",
            "_default_tail_atol",
            "_tail_mass",
            "kl_topk_tail",
            "kl_topk_tail_from_full",
            "_lcs_length",
            "rouge_l_f1",
            "first_difference",
            "exact_match_rate",
        ),
        tests=(
            "tests/test_stats.py",
            "tests/test_divergence_stats.py",
            "tests/test_pareto_ties.py",
            "tests/test_mutants_stats.py",
        ),
        floor=0.85,
        # The interval-coverage simulations (300 bootstrap intervals each, seconds per run)
        # would run for every mutant of the bootstrap code: about an hour on two shared
        # cores. Left out here; they run in the suite.
        pytest_args=("-k", "not coverage"),
    ),
}

_ONLY_FLOAT32 = (
    "the default calibration dtype is only ever compared with 'float32', so any other "
    "string, this one included, gives 2-byte values as 'bfloat16' does"
)
_SAME_LENGTH = (
    "zip(axes, combo): itertools.product yields one value per axis, so the two always have "
    "the same length and strict= never matters"
)
EQUIVALENT: dict[str, str] = {
    "quantbench.config.x__grid__mutmut_10": _SAME_LENGTH,
    "quantbench.config.x__grid__mutmut_13": _SAME_LENGTH,
    "quantbench.config.x__grid__mutmut_14": _SAME_LENGTH,
    "quantbench.preflight.x_estimate_memory__mutmut_1": _ONLY_FLOAT32,
    "quantbench.preflight.x_estimate_memory__mutmut_2": _ONLY_FLOAT32,
    "quantbench.preflight.x_preflight_variants__mutmut_1": _ONLY_FLOAT32,
    "quantbench.preflight.x_preflight_variants__mutmut_2": _ONLY_FLOAT32,
    "quantbench.schemes.grouping.x_candidate_group_sizes__mutmut_3": (
        "starting the search for the largest power of two at 2 instead of 1 ends on the "
        "same power for every request of 2 or more, and below 16 nothing is appended anyway"
    ),
    "quantbench.schemes.grouping.x_candidate_group_sizes__mutmut_6": (
        "with '<' a request that is itself a power of two stops one power lower; the request "
        "is listed first either way and its own power is skipped, so the list is the same"
    ),
}
"""Surviving mutants that no test can kill, by mutmut's name, with the reason (the per-target
files in EQUIVALENT_DIR add to these)."""

EQUIVALENT_DIR = ROOT / "benchmarks" / "mutation_equivalent"
"""One JSON file per target (`recommend.json`, ...): mutmut name -> why the mutant is
equivalent, written beside the target's tests as its survivors are studied."""
for _file in sorted(EQUIVALENT_DIR.glob("*.json")):
    EQUIVALENT.update(json.loads(_file.read_text()))

EQUIVALENT_RULES: tuple[tuple[str, str, str], ...] = (
    (
        r"np\.errstate\(",
        r"np\.errstate\(",
        "np.errstate only chooses whether numpy warns about inf/nan on the way; the values "
        "computed are the same",
    ),
    (
        r"\.astype\(np\.float64, copy=False\)",
        r"\.astype\(np\.float64, (copy=(None|True)|)\s*\)",
        "copy= only decides whether astype copies; the array's values are the same",
    ),
    (
        r"np\.empty\(n_tokens, dtype=np\.float64\)",
        r"np\.empty\(n_tokens, (dtype=None|)\s*\)",
        "np.empty's default dtype is float64",
    ),
    (
        r"rows_per_chunk = max\(1, ",
        r"rows_per_chunk = max\(2, |rows_per_chunk = max\(1, _MAX_CHUNK_ELEMENTS // max\(2, ",
        "the chunk size bounds memory only; chunked and whole results are equal "
        "(tests/test_mutants_stats.py forces small chunks and checks exactly that)",
    ),
    (
        r"for start in range\(0, n_tokens, rows_per_chunk\)",
        r"for start in range\(0, n_tokens, \)",
        "a step of 1 makes chunks overlap; each overlapping row is written again with the "
        "same value",
    ),
)
"""Classes of equivalent mutants, by what the diff removes and what it adds (regexes)."""


def equivalent_reason(mutant: str, diff: list[str]) -> str | None:
    """Why a surviving mutant is equivalent, from EQUIVALENT or EQUIVALENT_RULES; else None."""
    if mutant in EQUIVALENT:
        return EQUIVALENT[mutant]
    removed = [d[1:] for d in diff if d.startswith("-")]
    added = [d[1:] for d in diff if d.startswith("+")]
    if len(removed) != 1 or len(added) > 1:
        return None
    for old, new, reason in EQUIVALENT_RULES:
        if re.search(old, removed[0]) and added and re.search(new, added[0]):
            return reason
    return None


KILLED_BY: dict[str, str] = {}
"""Mutants that survived a run and are now killed, by name, with the test added for each."""


def functions_in(path: Path) -> list[str]:
    """mutmut's names for the top-level functions and the methods in the file at `path`."""
    names: list[str] = []
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            names.append(f"x_{node.name}")
        elif isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
                    names.append(f"xǁ{node.name}ǁ{item.name}")
    return names


def module_name(path: str) -> str:
    return path.removeprefix("src/").removesuffix(".py").replace("/", ".")


def scope_patterns(target: Target, work: Path) -> list[str]:
    """mutmut name globs for the functions in scope (as the snapshot has them), one each."""
    patterns = []
    for module in target.modules:
        for name in functions_in(work / module):
            bare = name.removeprefix("x_").split("ǁ")[-1]
            if target.functions is None or bare in target.functions:
                patterns.append(f"{module_name(module)}.{name}__mutmut_*")
    return patterns


def write_mutmut_config(work: Path, target: Target, present: list[str]) -> None:
    only = ", ".join(f'"{m}"' for m in target.modules)
    tests = ", ".join(f'"{t}"' for t in present)
    pytest_args = ["-p", "no:cacheprovider", "-q", *target.pytest_args]
    (work / "pyproject.toml").write_text(
        "[tool.mutmut]\n"
        'source_paths = ["src"]\n'
        f"only_mutate = [{only}]\n"
        f"pytest_add_cli_args_test_selection = [{tests}]\n"
        f"pytest_add_cli_args = {json.dumps(pytest_args)}\n"
        "\n[tool.pytest.ini_options]\n"
        'markers = ["slow: minutes", "vllm: the vllm backend"]\n'
    )


def prepare(name: str, target: Target, rev: str) -> Path:
    """A snapshot of `rev`: src/, the target's tests and their helpers, a pyproject for mutmut."""
    work = WORK / name
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", rev], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout.strip()
    files = {t.split("::")[0] for t in target.tests}
    listed = subprocess.run(
        ["git", "ls-tree", "-r", "--name-only", commit, "--", *sorted(files)],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    present = [t for t in target.tests if t.split("::")[0] in listed]
    archive = subprocess.run(
        ["git", "archive", commit, "src", "tests/conftest.py", "tests/records.py", *listed],
        cwd=ROOT,
        check=True,
        capture_output=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(work)], input=archive, check=True)
    (work / "commit.txt").write_text(commit)
    write_mutmut_config(work, target, present)
    return work


def resume(name: str, rev: str, max_children: int) -> float:
    """Re-test only the survivors of the last run of `name` with the tests of `rev`.

    Allowed only when the mutated modules are the same at `rev` as in the snapshot: then a
    killed mutant stays killed (more tests can only kill more), and the outcome is what a
    full run at `rev` gives, in minutes instead of most of an hour.
    """
    target = TARGETS[name]
    work = WORK / name
    commit = git_out("rev-parse", "--short", rev).strip()
    for module in target.modules:
        if git_out("show", f"{commit}:{module}") != (work / module).read_text():
            raise SystemExit(f"{module} differs at {commit} from the snapshot: run afresh")
    patterns = scope_patterns(target, work)
    alive = [m for m, s in statuses(work, patterns).items() if s in ("survived", "no tests")]
    files = sorted({t.split("::")[0] for t in target.tests})
    listed = git_out("ls-tree", "-r", "--name-only", commit, "--", *files).split()
    archive = subprocess.run(
        ["git", "archive", commit, "tests/conftest.py", "tests/records.py", *listed],
        cwd=ROOT,
        check=True,
        capture_output=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(work)], input=archive, check=True)
    write_mutmut_config(work, target, [t for t in target.tests if t.split("::")[0] in listed])
    (work / "mutants" / "mutmut-stats.json").unlink(missing_ok=True)  # collect test stats anew
    (work / "resumed_from.txt").write_text((work / "commit.txt").read_text())
    (work / "commit.txt").write_text(commit)
    started = time.monotonic()
    done = mutmut(work, "run", "--max-children", str(max_children), *alive)
    (work / "resume.log").write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        raise SystemExit(f"mutmut run failed for {name}; see {work}/resume.log")
    return time.monotonic() - started


def git_out(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout


def mutmut(work: Path, *args: str) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("mutmut")
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run(
        [str(exe), *args], cwd=work, env=env, capture_output=True, text=True, check=False
    )


def run(name: str, rev: str, max_children: int) -> float:
    target = TARGETS[name]
    work = prepare(name, target, rev)
    started = time.monotonic()
    patterns = scope_patterns(target, work)
    done = mutmut(work, "run", "--max-children", str(max_children), *patterns)
    wall_s = time.monotonic() - started
    (work / "run.log").write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        raise SystemExit(
            f"mutmut run failed for {name} (exit {done.returncode}); see {work}/run.log"
        )
    return wall_s


def statuses(work: Path, patterns: list[str]) -> dict[str, str]:
    """Every in-scope mutant's status (killed, survived, timeout, ...) from `mutmut results`."""
    out = mutmut(work, "results", "--all", "true").stdout
    found: dict[str, str] = {}
    regexes = [re.compile(re.escape(p).replace(r"\*", ".*") + "$") for p in patterns]
    for line in out.splitlines():
        mutant, sep, status = line.strip().rpartition(": ")
        if sep and any(r.match(mutant) for r in regexes):
            found[mutant] = status.strip()
    return found


def mutant_sources(work: Path, target: Target) -> dict[str, str]:
    """Source of every function in mutmut's mutated copies, by name (x_f__mutmut_3 ...)."""
    found: dict[str, str] = {}
    for module in target.modules:
        text = (work / "mutants" / module).read_text()
        lines = text.splitlines()
        for node in ast.walk(ast.parse(text)):
            if (
                isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
                and "__mutmut_" in node.name
            ):
                found[node.name] = "\n".join(lines[node.lineno - 1 : node.end_lineno])
    return found


def mutant_diff(sources: dict[str, str], mutant: str) -> list[str]:
    """The lines a mutant changes, against the original function (as `mutmut show` prints)."""
    function = mutant.rsplit(".", 1)[-1]
    original_name = function.rsplit("__mutmut_", 1)[0] + "__mutmut_orig"
    original = sources.get(original_name, "")
    mutated = sources.get(function, "").replace(function, original_name, 1)
    lines = difflib.unified_diff(original.splitlines(), mutated.splitlines(), lineterm="", n=0)
    return [d for d in lines if d.startswith(("-", "+")) and d[:3] not in ("---", "+++")]


def summarize(name: str, command: str) -> str:
    target = TARGETS[name]
    work = WORK / name
    patterns = scope_patterns(target, work)
    found = statuses(work, patterns)
    commit = (work / "commit.txt").read_text()
    killed = sum(1 for s in found.values() if s in ("killed", "timeout", "caught by type check"))
    # A mutant no test reaches ("no tests") is as alive as one that every test lets through.
    alive = ("survived", "no tests")
    survivors = sorted(m for m, s in found.items() if s in alive)
    sources = mutant_sources(work, target)
    diffs = {m: mutant_diff(sources, m) for m in survivors}
    reasons = {m: equivalent_reason(m, diffs[m]) for m in survivors}
    equivalent = [m for m in survivors if reasons[m]]
    other = {m: s for m, s in found.items() if s not in ("killed", "timeout", *alive)}
    scored = len(found) - len(other)
    score = killed / scored if scored else 0.0
    score_eq = (killed + len(equivalent)) / scored if scored else 0.0
    functions = sorted({p.split(".")[-1].removesuffix("__mutmut_*") for p in patterns})
    lines = [
        f"# Mutation testing: {name}",
        "",
        f"- date: {dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()}",
        f"- machine: {platform.machine()}, {os.cpu_count()} logical cores "
        "(AMD EPYC Zen 4 class), shared with other work",
        f"- command: `{command}`"
        + (" then the same with `--resume`" if (work / "resumed_from.txt").is_file() else ""),
        f"- tool: mutmut {mutmut(work, '--version').stdout.strip().split()[-1]}",
        f"- modules: {', '.join(target.modules)}; functions in scope: those at commit "
        f"{commit} ({len(functions)}: {', '.join(f.removeprefix('x_') for f in functions)})",
        f"- tests that judge: {', '.join(target.tests)}"
        + (f" (pytest {' '.join(target.pytest_args)})" if target.pytest_args else ""),
    ]
    if (work / "wall_s.txt").is_file():
        lines.append(
            f"- wall time of the mutmut run: {(work / 'wall_s.txt').read_text().strip()} s"
        )
    if (work / "resume_wall_s.txt").is_file():
        lines.append(
            f"- wall time of the --resume run: {(work / 'resume_wall_s.txt').read_text().strip()} s"
        )
    if (work / "resumed_from.txt").is_file():
        lines.append(
            f"- every mutant was run at commit {(work / 'resumed_from.txt').read_text().strip()}; "
            f"the survivors were run again with the tests of {commit} (`--resume`: the "
            "mutated module is the same at both, and more tests can only kill more)"
        )
    lines += [
        "",
        f"**Score: {killed} of {scored} mutants killed = {score:.1%}** "
        f"({score_eq:.1%} counting the {len(equivalent)} equivalent survivors as not "
        f"killable); target {target.floor:.0%}.",
        "",
    ]
    if other:
        counts: dict[str, int] = {}
        for status in other.values():
            counts[status] = counts.get(status, 0) + 1
        listed = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        lines += [
            f"Not scored: {listed} ('not checked': the run ended before mutmut reached them;"
            " the score is over the mutants it did judge).",
            "",
        ]
    if KILLED_BY:
        now_killed = [m for m in sorted(KILLED_BY) if m in found and m not in survivors]
        if now_killed:
            lines += ["## Survivors of an earlier run, now killed", ""]
            lines += [f"- `{m}`: {KILLED_BY[m]}" for m in now_killed]
            lines.append("")
    lines += ["## Surviving mutants", ""]
    if not survivors:
        lines.append("None.")
    for mutant in survivors:
        reason = reasons[mutant] or f"UNEXPLAINED ({found[mutant]})"
        diff_lines = diffs[mutant]
        lines += [
            f"### `{mutant}`",
            "",
            f"Equivalent: {reason}" if reasons[mutant] else reason,
            "",
        ]
        lines += ["```diff", *diff_lines, "```", ""]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("targets", nargs="+", choices=sorted(TARGETS))
    parser.add_argument("--rev", default="HEAD", help="the commit to snapshot and score")
    parser.add_argument("--max-children", type=int, default=2)
    parser.add_argument("--summarize-only", action="store_true")
    parser.add_argument(
        "--resume", action="store_true", help="re-test the last run's survivors with REV's tests"
    )
    args = parser.parse_args()
    for name in args.targets:
        if args.summarize_only:
            wall_s = None
        elif args.resume:
            wall_s = resume(name, args.rev, args.max_children)
        else:
            wall_s = run(name, args.rev, args.max_children)
        command = (
            f".venv/bin/python benchmarks/mutation.py {name} --max-children {args.max_children}"
        )
        record = WORK / name / ("resume_wall_s.txt" if args.resume else "wall_s.txt")
        if wall_s is not None:
            record.write_text(f"{wall_s:.0f}")
        text = summarize(name, command)
        (RESULTS / f"mutation_{name}.md").write_text(text)
        print(text.split("\n\n")[1] if "\n\n" in text else text)
        print(next(line for line in text.splitlines() if line.startswith("**Score")))


if __name__ == "__main__":
    main()
