"""Mutation score of the statistics and integrity modules (issue 35): the share of mutants the tests kill.

    nice -n 19 .venv/bin/python -m bench.mutation [--survivors] [MODULE ...]   # minutes; not run in CI
    .venv/bin/python -m bench.mutation --quick   # stages nothing: checks the plan and prints it

Tool: mutmut 3 (``pip install mutmut==3.8.1``): it writes every mutant of a function into one copy
beside a trampoline and forks one warm pytest per mutant, running only the tests that called the
function (milliseconds per mutant, where a fresh pytest costs seconds). mutmut names a mutant by its
file's path, and this project's files install under other names (``eval/`` is ``orthosae.eval``), so
each module is measured in a staged src-layout copy, ``build/mutation/<module>/src/orthosae/...``,
where path and import name agree; the copy's ``orthosae`` shadows the editable install.

Prints per module: mutants, killed (a timeout counts as killed), survived, no tests; then the total.
``--survivors``: each surviving mutant as file:line and the line it became. ``--recheck``: rerun
only the mutants the last run of a module left alive, against today's tests (killed mutants stay
killed while tests are only added; the selection must be unchanged, or mutmut reruns everything).
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGE = ROOT / "build" / "mutation"
# module -> the test files that exercise it (the runner runs only these)
MODULES = {
    "eval/matched_damage.py": ["tests/eval/test_matched_damage.py", "tests/eval/test_statistics_properties.py"],
    "eval/frontier.py": ["tests/eval/test_frontier.py", "tests/eval/test_statistics_properties.py"],
    "eval/aggregate.py": ["tests/eval/test_aggregate.py"],
    "eval/unlearning.py": ["tests/eval/test_unlearning.py"],
    "eval/frequencies.py": ["tests/eval/test_frequencies.py"],
    "train/digests.py": ["tests/train/test_digests.py", "tests/train/test_verify.py"],
    "train/verify.py": ["tests/train/test_verify.py"],
    "common/overrides.py": ["tests/common/test_overrides.py"],
}
# Functions left out, each measured end to end elsewhere: drawing code (a mutant changes pixels, not
# numbers) and the code that runs the language model (each of its mutants would rebuild the tiny
# model's session fixture, minutes per mutant). The list is printed with the scores.
LEFT_OUT = {
    "eval/unlearning.py": [
        "letter_logits",
        "mcq_scores",
        "_ce_per_context",
        "reconstruction_per_context",
        "run_unlearning",
        "run_sweep",
        "unlearning_baseline",
        "_evaluate_setting",
        # run_unlearning's and run_sweep's own steps (split out for length): their tests run the model
        "_rankings",
        "_clamp_settings",
        "_ladder_settings",
        "_mcq_summary",
        "_loss_summary",
    ],
}
# tests taking these fixtures build a model or train runs first (seconds to minutes per mutant), and
# tests of plots draw (the drawing code is left out): the runner keeps the others
SLOW_FIXTURES = {"lm", "tiny_model_dir", "site", "trained", "partial", "finished_pipeline", "reference"}
STAGES = {"orthosae": "", "common": "common", "harvest": "harvest", "train": "train", "eval": "eval"}
KILLED = {1, 3, 24, -24, 36, 152, 255}  # mutmut's exit codes of a failed test run, and of a timeout
SURVIVED, NO_TESTS = {0}, {5, 33}


def stage(module: str) -> Path:
    """A fresh src-layout copy with mutmut's settings for ``module`` in its pyproject.toml."""
    where = STAGE / Path(module).stem
    shutil.rmtree(where, ignore_errors=True)
    skip = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for folder, sub in STAGES.items():
        shutil.copytree(ROOT / folder, where / "src" / "orthosae" / sub, ignore=skip, dirs_exist_ok=True)
    for extra in ("tests", "configs", "docs", "bench"):
        shutil.copytree(ROOT / extra, where / extra, ignore=skip)
    shutil.copy2(ROOT / "pipeline.toml", where)
    target = f"src/orthosae/{module}"
    leave_out(where / target, LEFT_OUT.get(module, []))
    settings = {
        "source_paths": ["src"],
        "only_mutate": [target],
        "also_copy": ["configs", "docs", "bench", "pipeline.toml"],
        "pytest_add_cli_args": ["-n", "0", "-p", "no:cacheprovider", "-q"],
        "pytest_add_cli_args_test_selection": fast_tests(MODULES[module]),
    }
    toml = "\n[tool.mutmut]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in settings.items())
    (where / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text() + toml)
    return where


def leave_out(path: Path, names: list[str]) -> None:
    """Fence the functions ``names`` of the staged copy in mutmut's no-mutate pragmas."""
    lines = path.read_text().splitlines()
    spans = [
        (n.lineno - len(n.decorator_list), n.end_lineno)
        for n in ast.parse("\n".join(lines)).body
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name in names
    ]
    assert len(spans) == len(names), (path, names)
    for a, b in sorted(spans, reverse=True):
        lines[b:b] = ["# pragma: no mutate end"]
        lines[a - 1 : a - 1] = ["# pragma: no mutate start"]
    path.write_text("\n".join(lines) + "\n")


def fast_tests(files: list[str]) -> list[str]:
    """pytest's selection for ``files``: the files, less (``-k``) the tests that take one of
    ``SLOW_FIXTURES`` or draw. Tests added later join the selection without changing it."""
    slow = [
        n.name
        for f in files
        for n in ast.parse((ROOT / f).read_text()).body
        if isinstance(n, ast.FunctionDef)
        and n.name.startswith("test")
        and ({a.arg for a in n.args.args} & SLOW_FIXTURES or "plot" in n.name)
    ]
    return [*files, "-k", f"not ({' or '.join(slow)})"] if slow else list(files)


def mutmut(where: Path, *args: str) -> str:
    exe = Path(sys.executable).with_name("mutmut")
    out = subprocess.run([str(exe), *args], cwd=where, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"mutmut {' '.join(args)} failed in {where}:\n{out.stdout[-3000:]}{out.stderr[-3000:]}")
    return out.stdout


def survivor_line(module: str, mutated: dict[str, list[str]], name: str) -> str:
    """``file:line  original -> mutated`` of one mutant: its function beside the original, line by line."""
    func = name.rpartition(".")[2]
    base = re.sub(r"__mutmut_\d+$", "", func)
    orig = mutated[base + "__mutmut_orig"]
    diff = [(i, a.strip(), b.strip()) for i, (a, b) in enumerate(zip(orig, mutated[func])) if i and a != b]
    source = (ROOT / module).read_text().splitlines()
    start = next((i for i, s in enumerate(source) if re.match(rf"\s*def {base[2:]}\(", s)), None)
    if not diff or start is None:
        return f"{module}:?  {func}"
    line = start + diff[0][0] + 1
    return f"{module}:{line}  {' / '.join(d[1] for d in diff)}  ->  {' / '.join(d[2] for d in diff)}"


def functions(path: Path) -> dict[str, list[str]]:
    """Every top-level function of mutmut's copy (the original and each mutant) -> its lines."""
    text = path.read_text()
    lines = text.splitlines()
    return {
        n.name: lines[n.lineno - 1 : n.end_lineno]
        for n in ast.parse(text).body
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
    }


def measure(module: str, survivors: bool, recheck: bool = False) -> dict:
    where = STAGE / Path(module).stem
    copy = where / "mutants" / "src" / "orthosae" / module
    meta = copy.with_name(copy.name + ".meta")
    if recheck and meta.exists():  # today's tests against the mutants the last run left alive
        shutil.copytree(
            ROOT / "tests", where / "tests", ignore=shutil.ignore_patterns("__pycache__"), dirs_exist_ok=True
        )
        alive = [n for n, c in json.loads(meta.read_text())["exit_code_by_key"].items() if c not in KILLED]
        if alive:
            (where / "mutmut.log").write_text(mutmut(where, "run", "--max-children", "2", *alive))
    else:
        where = stage(module)
        (where / "mutmut.log").write_text(mutmut(where, "run", "--max-children", "2"))
    codes = json.loads(meta.read_text())["exit_code_by_key"]
    out = {
        "mutants": len(codes),
        "killed": sum(1 for c in codes.values() if c in KILLED),
        "survived": sum(1 for c in codes.values() if c in SURVIVED),
        "no tests": sum(1 for c in codes.values() if c in NO_TESTS),
        "other": {
            c: n for c in set(codes.values()) - KILLED - SURVIVED - NO_TESTS if (n := list(codes.values()).count(c))
        },
    }
    if survivors:
        mutated = functions(copy)
        out["list"] = [
            f"{survivor_line(module, mutated, n)}   [{n.rpartition('.')[2]}, exit {c}]"
            for n, c in sorted(codes.items())
            if c not in KILLED
        ]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("modules", nargs="*", help=f"default: all of {', '.join(MODULES)}")
    ap.add_argument("--survivors", action="store_true", help="list every mutant not killed, file:line and diff")
    ap.add_argument(
        "--recheck",
        action="store_true",
        help="rerun only the mutants the last run left alive, against today's tests (valid while tests are only added)",
    )
    ap.add_argument("--quick", action="store_true", help="check the plan (modules, test files) and print it")
    args = ap.parse_args()
    modules = args.modules or list(MODULES)
    print("| module | mutants | killed | survived | no tests | killed share |")
    print("|---|---|---|---|---|---|")
    if args.quick:
        for m in modules:
            missing = [t for t in MODULES[m] if not (ROOT / t).is_file()]
            assert (ROOT / m).is_file() and not missing, (m, missing)
            print(f"| {m} | (not run: --quick) | tests: {', '.join(MODULES[m])} | | | |")
        return
    total = {"mutants": 0, "killed": 0, "survived": 0, "no tests": 0}
    lists = {}
    for m in modules:
        r = measure(m, args.survivors, args.recheck)
        for k in total:
            total[k] += r[k]
        lists[m] = r.get("list", [])
        share = r["killed"] / r["mutants"] if r["mutants"] else float("nan")
        other = f" (+ {r['other']})" if r["other"] else ""
        print(f"| {m} | {r['mutants']} | {r['killed']} | {r['survived']} | {r['no tests']}{other} | {share:.1%} |")
        sys.stdout.flush()
    share = total["killed"] / total["mutants"] if total["mutants"] else float("nan")
    left = "; ".join(f"{m}: {', '.join(fs)}" for m, fs in LEFT_OUT.items() if m in modules)
    print(
        f"| total | {total['mutants']} | {total['killed']} | {total['survived']} | {total['no tests']} | {share:.1%} |"
    )
    if left:
        print(f"\nleft out (drawing, or running the language model): {left}")
    for m, lines in lists.items():
        if lines:
            print(f"\n{m}: not killed")
            print("\n".join(f"- {x}" for x in lines))


if __name__ == "__main__":
    main()
