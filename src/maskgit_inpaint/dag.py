"""The code half of the DVC DAG: a stage's code deps are the project files its command imports.

A stage reruns when a file it runs changes, and only then. Rather than keeping the
`deps:` lists of dvc.yaml by hand, they are derived from the import closure of each
stage's command (`python -m stages.<name>`, imports.closure). Data deps (paths that
are not Python files) are kept as they are written.

    python -m maskgit_inpaint.dag          # rewrite the code deps of dvc.yaml
    python -m maskgit_inpaint.dag --check  # list disagreements, exit 1 if any (tests/test_dag.py)

The closures come from imports.py, which also keys the grid's cell cache
(evaluation.fingerprint), so DVC and Prefect notice the same edits.
"""
from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from maskgit_inpaint.imports import closure

DVC_FILE = "dvc.yaml"
IMPORT_ROOTS = ("src", ".")  # where the project's top-level packages live: maskgit_inpaint; stages, flows
STAGE_COMMAND = re.compile(r"^python3? -m ([\w.]+)")


@dataclass(frozen=True)
class Stage:
    """One stage of dvc.yaml: its command's module, and the code and data deps it lists now."""

    name: str
    module: str
    listed_code: tuple[str, ...]
    data: tuple[str, ...]


def _is_code(dep: str) -> bool:
    return dep.endswith(".py")


def stages(repo: Path) -> list[Stage]:
    dvc_file = repo / DVC_FILE
    spec = yaml.safe_load(dvc_file.read_text())
    found = []
    for name, stage in spec["stages"].items():
        match = STAGE_COMMAND.match(stage["cmd"])
        if match is None:
            raise ValueError(f"{dvc_file}: stage {name}: cannot derive deps from cmd {stage['cmd']!r}; "
                             "run the stage as `python -m <module>`")
        deps = [str(d) for d in stage.get("deps", [])]
        found.append(Stage(name, match.group(1), tuple(d for d in deps if _is_code(d)), tuple(d for d in deps if not _is_code(d))))
    return found


def code_deps(repo: Path, module: str) -> dict[str, str | None]:
    """Repo-relative code file -> repo-relative file that imports it, for the closure of `module`."""
    roots = [(repo / r).resolve() for r in IMPORT_ROOTS]
    repo = repo.resolve()

    def rel(path: Path | None) -> str | None:
        return None if path is None else path.relative_to(repo).as_posix()

    return {rel(f): rel(by) for f, by in sorted(closure(module, roots).items())}


def check(repo: Path) -> list[str]:
    """Every disagreement between dvc.yaml's code deps and the import closures, one line each."""
    problems = []
    for stage in stages(repo):
        derived = code_deps(repo, stage.module)
        for missing in sorted(set(derived) - set(stage.listed_code)):
            problems.append(f"{DVC_FILE}: stage {stage.name} does not list {missing} "
                            f"(imported by {derived[missing]}); run `make deps`")
        for stale in sorted(set(stage.listed_code) - set(derived)):
            problems.append(f"{DVC_FILE}: stage {stage.name} lists {stale}, which {stage.module} does not import; run `make deps`")
    return problems


def _deps_block(code: list[str], data: tuple[str, ...], indent: str) -> list[str]:
    return [f"{indent}- {dep}\n" for dep in [*code, *data]]


def write(repo: Path) -> dict[str, tuple[int, int]]:
    """Rewrite each stage's deps in dvc.yaml (code first, sorted, then its data deps); returns stage -> (before, after) code files."""
    dvc_file = repo / DVC_FILE
    lines = dvc_file.read_text().splitlines(keepends=True)
    by_name = {s.name: s for s in stages(repo)}
    counts, out, stage, i = {}, [], None, 0
    while i < len(lines):
        line = lines[i]
        out.append(line)
        if (m := re.match(r"^  ([\w-]+):\s*$", line)) and m.group(1) in by_name:
            stage = by_name[m.group(1)]
        elif stage is not None and re.match(r"^    deps:\s*$", line):
            i += 1
            items = []
            while i < len(lines) and re.match(r"^      - ", lines[i]):
                items.append(lines[i])
                i += 1
            code = list(code_deps(repo, stage.module))
            out += _deps_block(code, stage.data, "      ")
            counts[stage.name] = (len(stage.listed_code), len(code))
            stage = None
            continue
        i += 1
    if missing := sorted(set(by_name) - set(counts)):
        raise ValueError(f"{dvc_file}: stages {missing} have no `deps:` block to rewrite; add `deps:` under each")
    text = "".join(out)
    if yaml.safe_load(text)["stages"].keys() != yaml.safe_load(dvc_file.read_text())["stages"].keys():
        raise RuntimeError(f"{dvc_file}: rewriting the deps would change the stages; file left as it was")
    dvc_file.write_text(text)
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m maskgit_inpaint.dag", description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only report disagreements (exit 1 if any)")
    parser.add_argument("--repo", type=Path, default=Path("."), help="repository root holding dvc.yaml")
    args = parser.parse_args(argv)
    if args.check:
        problems = check(args.repo)
        print("\n".join(problems) if problems else f"dag: {DVC_FILE} code deps match the import closures")
        return 1 if problems else 0
    for name, (before, after) in write(args.repo).items():
        print(f"dag: {name}: {after} code files" + ("" if before == after else f" (was {before})"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
