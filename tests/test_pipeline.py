"""The real chain under real DVC, on the tiny profile, in a throwaway copy of the repo."""
import json
import os
import signal
import subprocess
import time

import pandas as pd
import pytest

from conftest import commit_all, dvc_env, project_repo, run_ok, write_tiny_params


def _repo(path, **section_updates):
    """A git + DVC repo with this project's code, dvc.yaml and the tiny params."""
    return project_repo(path, lambda params_file: write_tiny_params(params_file, **section_updates))


def _changed_stages(repo) -> set[str]:
    return set(json.loads(run_ok(["dvc", "status", "--json"], repo)))


# An edit (a comment is enough) -> the stages `dvc status` must report: exactly those whose code runs the file.
# register_model loads and runs the model it saves (its input example), so the decode code is its code too.
EDITS = {
    "src/maskgit_inpaint/schedules.py": {"train_transformer", "eval_grid", "register_model"},
    "src/maskgit_inpaint/sampling.py": {"eval_grid", "register_model"},
    "src/maskgit_inpaint/inpaint.py": {"register_model"},
    "src/maskgit_inpaint/data/sharding.py": {"shard"},
    "README.md": set(),
    "profiles/embedded.yaml": set(),  # a comment: the overlay's values are what DVC compares
}
# eval_masks reads the vqgan section for f (random_tokens hides whole f x f patches): it reruns in seconds, its outs the same.
# register_model records the eval section in the model (the settings it serves where no grid has picked).
OVERLAY_EDITS = {"vqgan": {"finetune_vqgan", "eval_masks"}, "eval": {"eval_masks", "eval_grid", "register_model"}}


def test_dvc_repro_runs_the_chain_then_only_what_changed(tmp_path):
    repo = _repo(tmp_path / "repo")
    out = run_ok(["dvc", "repro"], repo)
    for stage in ("sample", "shard", "finetune_vqgan", "extract_tokens", "train_transformer", "eval_grid", "register_model"):
        assert f"Running stage '{stage}'" in out
    assert "registered maskgit-inpaint version 1 -> models:/maskgit-inpaint/1" in out and (repo / "models/mlflow/MLmodel").is_file()
    grid = pd.read_csv(repo / "results/grid.csv")
    # 2 masks x 2 schedules x (T=1: k 1; T=3: k 1, 2, 3)
    assert len(grid[grid.method == "maskgit"]) == 16 and grid[["psnr", "ssim"]].notna().all().all()

    assert "Data and pipelines are up to date" in run_ok(["dvc", "repro"], repo)
    assert "eval.json" in run_ok(["dvc", "metrics", "show"], repo)
    metrics_files = {p.name for p in (repo / "metrics").glob("*.json") if not p.stem.endswith("_summary")}
    assert metrics_files == {"vqgan.json", "transformer.json", "eval.json"}
    for name in metrics_files:  # numbers to compare across experiments; words go to <stage>_summary.json
        values = json.loads((repo / "metrics" / name).read_text())
        assert values.pop("profile") == "embedded", f"metrics/{name} names the profile: dvc metrics diff shows it"
        not_numbers = {k: v for k, v in values.items() if isinstance(v, bool) or not isinstance(v, (int, float))}
        assert not not_numbers and len(values) <= 60, f"metrics/{name}: {not_numbers or len(values)}"
    for path, expected in EDITS.items():
        original = (repo / path).read_text()
        (repo / path).write_text(original + "# an edit\n")
        assert _changed_stages(repo) == expected, f"after editing {path}"
        (repo / path).write_text(original)
    overlay = repo / "profiles/embedded.yaml"
    original = overlay.read_text()
    for section, stages in OVERLAY_EDITS.items():  # a value set in the active overlay reruns the stages of its section
        overlay.write_text(original.replace(f"{section}: {{}}", f"{section}: {{seed: 5}}"))
        assert _changed_stages(repo) == stages, f"after setting {section}.seed in {overlay.name}"
    overlay.write_text(original)

    run_ok(["dvc", "repro", "--force", "train_transformer"], repo)  # retrains it and everything before it
    assert _changed_stages(repo) == set(), "identical inputs must give identical outs, so nothing downstream reruns"

    commit_all(repo, "lock")
    out = run_ok(["dvc", "exp", "run", "-S", "eval.T=[2]"], repo)
    assert "Running stage 'eval_grid'" in out and "registered maskgit-inpaint version 2" in out  # new picks, a new version
    assert "Running stage 'train_transformer'" not in out and "Running stage 'finetune_vqgan'" not in out
    assert set(pd.read_csv(repo / "results/grid.csv")["T"].dropna()) == {2}


@pytest.mark.slow
def test_killed_dvc_repro_resumes_the_tokenizer(tmp_path):
    repo = _repo(tmp_path / "repo", vqgan={"steps": 150, "checkpoint_every": 10})
    proc = subprocess.Popen(["dvc", "repro", "finetune_vqgan"], cwd=repo, env=dvc_env(repo),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    state = repo / "checkpoints/vqgan.pt"
    deadline = time.time() + 300
    while not state.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # dvc and its stage process, as a closed laptop lid would
    proc.wait()
    assert state.exists(), "the stage finished before its first checkpoint"
    assert not (repo / "models/vqgan").exists()

    out = run_ok(["dvc", "repro", "finetune_vqgan"], repo)
    assert "Running stage 'finetune_vqgan'" in out and "resuming from checkpoints/vqgan.pt" in out
    assert (repo / "models/vqgan/model.safetensors").exists() and not state.exists()
