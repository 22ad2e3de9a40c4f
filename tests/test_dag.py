"""dvc.yaml's code deps are the import closures of the stages, and the check says when they are not."""
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from maskgit_inpaint import dag, imports

from conftest import ROOT


def _copy_project(dest: Path) -> Path:
    for name in ("src", "stages", "flows"):
        shutil.copytree(ROOT / name, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copy(ROOT / "dvc.yaml", dest / "dvc.yaml")
    return dest


def _check(repo: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "maskgit_inpaint.dag", "--check", "--repo", str(repo)],
                          capture_output=True, text=True)


def _deps(repo: Path, stage: str) -> list[str]:
    return yaml.safe_load((repo / "dvc.yaml").read_text())["stages"][stage]["deps"]


def test_dvc_yaml_code_deps_are_the_import_closures():
    assert dag.check(ROOT) == []


def test_a_new_import_fails_the_check_naming_stage_and_file(tmp_path):
    repo = _copy_project(tmp_path)
    (repo / "src/maskgit_inpaint/throwaway.py").write_text('"""A module no stage imported before."""\n')
    sharding = repo / "src/maskgit_inpaint/data/sharding.py"
    original = sharding.read_text()
    sharding.write_text(original + "\nfrom maskgit_inpaint import throwaway  # noqa: E402,F401\n")

    done = _check(repo)
    assert done.returncode == 1
    assert ("dvc.yaml: stage shard does not list src/maskgit_inpaint/throwaway.py "
            "(imported by src/maskgit_inpaint/data/sharding.py); run `make deps`") in done.stdout

    dag.write(repo)  # what `make deps` does
    assert _check(repo).returncode == 0
    assert "src/maskgit_inpaint/throwaway.py" in _deps(repo, "shard")
    assert _deps(repo, "shard")[-1] == "${paths.raw}"  # data deps are kept, after the code

    sharding.write_text(original)
    done = _check(repo)
    assert done.returncode == 1
    assert "stage shard lists src/maskgit_inpaint/throwaway.py, which stages.shard does not import" in done.stdout


def test_lazy_and_relative_imports_are_followed(tmp_path):
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    for name in ("__init__.py", "sub/__init__.py", "sub/near.py", "far.py", "lazy.py", "unused.py"):
        (package / name).write_text("")
    (package / "sub/start.py").write_text("from . import near\nfrom ..far import thing\n\n\ndef f():\n    import pkg.lazy\n")
    found = {p.relative_to(tmp_path).as_posix() for p in imports.closure("pkg.sub.start", [tmp_path])}
    assert found == {"pkg/__init__.py", "pkg/sub/__init__.py", "pkg/sub/start.py", "pkg/sub/near.py", "pkg/far.py", "pkg/lazy.py"}


def test_closures_hold_what_each_stage_runs_and_no_more():
    closures = {s.name: set(dag.code_deps(ROOT, s.module)) for s in dag.stages(ROOT)}
    lib = "src/maskgit_inpaint/"
    # register_model runs the model it saves (its input example): the decode code is in its closure too.
    running = lambda name: {stage for stage, files in closures.items() if lib + name in files}  # noqa: E731
    assert running("schedules.py") == {"train_transformer", "eval_grid", "register_model"}
    assert running("sampling.py") == {"eval_grid", "register_model"}
    assert running("inpaint.py") == {"register_model"}
    assert lib + "models/vqgan.py" not in closures["train_transformer"]  # reading tokens needs no tokenizer
    assert lib + "models/transformer.py" not in closures["extract_tokens"]
    assert not any(f.startswith(lib + "models/") for f in closures["shard"] | closures["sample"])


def test_grid_cache_key_follows_the_grid_code(tmp_path):
    repo = _copy_project(tmp_path)
    roots = [repo / "src"]
    before = imports.code_digest("maskgit_inpaint.evaluation", roots)
    with open(repo / "src/maskgit_inpaint/cli.py", "a") as f:  # the CLI imports the grid code, not the other way round
        f.write("# a comment\n")
    assert imports.code_digest("maskgit_inpaint.evaluation", roots) == before
    with open(repo / "src/maskgit_inpaint/schedules.py", "a") as f:
        f.write("# a comment\n")
    assert imports.code_digest("maskgit_inpaint.evaluation", roots) != before
