"""The real chain under real DVC, on the tiny profile, in a throwaway copy of the repo."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd

from conftest import ROOT, write_tiny_params


def _run(args, cwd):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "MLFLOW_TRACKING_URI": f"sqlite:///{cwd / 'mlflow.db'}"}
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def _commit(repo, message):
    _run(["git", "add", "-A"], repo)
    _run(["git", "commit", "-q", "-m", message], repo)


def test_dvc_repro_runs_the_chain_then_only_what_changed(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("src", "stages", "flows"):
        shutil.copytree(ROOT / name, repo / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("dvc.yaml", ".gitignore"):
        shutil.copy(ROOT / name, repo / name)
    write_tiny_params(repo / "params.yaml")
    _run(["git", "init", "-q"], repo)
    _run(["git", "config", "user.name", "test"], repo)  # `dvc exp run` commits
    _run(["git", "config", "user.email", "test@example.com"], repo)
    _run(["dvc", "init", "-q"], repo)
    _commit(repo, "project")

    out = _run(["dvc", "repro"], repo)
    for stage in ("sample", "shard", "finetune_vqgan", "extract_tokens", "train_transformer", "eval_grid"):
        assert f"Running stage '{stage}'" in out
    grid = pd.read_csv(repo / "results/grid.csv")
    assert len(grid[grid.method == "maskgit"]) == 10 and grid[["psnr", "ssim"]].notna().all().all()

    assert "Data and pipelines are up to date" in _run(["dvc", "repro"], repo)
    assert "eval.json" in _run(["dvc", "metrics", "show"], repo)

    _commit(repo, "lock")
    out = _run(["dvc", "exp", "run", "-S", "eval.T=[2]"], repo)
    assert "Running stage 'eval_grid'" in out
    assert "Running stage 'train_transformer'" not in out and "Running stage 'finetune_vqgan'" not in out
    assert set(pd.read_csv(repo / "results/grid.csv")["T"].dropna()) == {2}
