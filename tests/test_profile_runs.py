"""Each profile through the real `dvc repro` at its real shapes on CPU, with only the counts cut down.

A user of a GPU box runs `make run PROFILE=<name>` on the Places365 downloads and
taming's checkpoint; here the same command runs on a couple of dozen scenes written in
the official archive layout, a taming-layout f16-1024 checkpoint with random weights and
random-weight LPIPS / FID backbones in a temp torch hub. Image sizes, tokenizer
architectures, codebooks and transformers (places365: MaskGIT's 24 x 768) are the
profile's own; steps, image counts and the 256 px grids' axes are cut. About 2-4
minutes per profile on a 2-core laptop CPU: run by `make test-profiles` (and
`.ci/run`), not by `make test`.
"""
import json

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import ROOT, project_repo, run_ok
from downloads import write_places365_downloads, write_random_backbones, write_taming_f16_checkpoint

pytestmark = pytest.mark.profile_run

# The counts a smoke run cuts, per section; everything else keeps the profile's values.
COUNTS = {
    "data": {"max_train": None, "max_val": None, "min_train_shards": 2, "shard_max_count": 8, "workers": 0},
    "vqgan": {"steps": 2, "batch_size": 2, "warmup_steps": 0, "eval_every": 2, "eval_images": 2, "checkpoint_every": 2,
              "num_workers": 0, "download_weights": False},
    "tokens": {"batch_size": 4},
    "transformer": {"steps": 3, "batch_size": 4, "warmup_steps": 0, "eval_every": 3, "checkpoint_every": 3, "compile": False},
    "eval": {"num_images": 4, "batch_size": 4, "sample_images": 2, "bootstrap_resamples": 20, "download_weights": False},
}
# Grid axes cut where a 256 px decode costs seconds on a CPU; lab03 keeps its published grid (T = 7, k 3/5/7, 3 schedules).
AXES = {
    "places365": {"masks": ["center"], "schedules": ["cosine"], "T": [2], "sweet_spots": [1, 2]},
    "son2025": {},
    "lab03": {},
}
TRAIN_IMAGES, VAL_IMAGES = 12, 4


@pytest.fixture(scope="module")
def user_files(tmp_path_factory):
    """What a user downloads once: the Places365 archives, taming's checkpoint, the metric backbones."""
    root = tmp_path_factory.mktemp("downloads")
    return {"places365": write_places365_downloads(root / "places365", train=TRAIN_IMAGES, val=VAL_IMAGES),
            "taming": write_taming_f16_checkpoint(root / "vqgan_imagenet_f16_1024.ckpt"),
            "torch_home": write_random_backbones(root / "torch")}


def _cut(profile: str, repo):
    overlay_file = repo / "profiles" / f"{profile}.yaml"
    overlay = yaml.safe_load(overlay_file.read_text())
    for section, values in COUNTS.items():
        overlay[section].update(values)
    overlay["eval"].update(AXES[profile])
    overlay_file.write_text(yaml.safe_dump(overlay, sort_keys=False))
    return overlay


@pytest.mark.parametrize("profile", ["lab03", "son2025", "places365"])
def test_profile_runs_end_to_end_at_its_shapes(tmp_path, user_files, profile):
    repo = project_repo(tmp_path / "repo", lambda params_file: params_file.write_text((ROOT / "params.yaml").read_text()))
    (repo / "data").mkdir()
    (repo / "data/places365").symlink_to(user_files["places365"])  # where the profile's data.source looks
    (repo / "pretrained").mkdir(exist_ok=True)
    (repo / "pretrained/vqgan_imagenet_f16_1024.ckpt").symlink_to(user_files["taming"])
    overlay = _cut(profile, repo)
    env = {"TORCH_HOME": str(user_files["torch_home"])}

    # What `make run PROFILE=<name>` runs (test_make_run_switches_the_profile_then_reproduces checks the recipe).
    out = run_ok(["python", "-m", "maskgit_inpaint.profiles", "use", profile], repo, env) + run_ok(["dvc", "repro"], repo, env)

    assert f"profile {profile}:" in out and "Running stage 'eval_grid'" in out
    params = yaml.safe_load((repo / "params.yaml").read_text())
    assert params["profile"] == profile
    meta = json.loads((repo / "data/tokens/meta.json").read_text())
    assert meta["grid"] == [16, 16] and meta["codebook_size"] == overlay["vqgan"]["n_embed"] == 1024
    assert meta["image_size"] == overlay["data"]["image_size"] and meta["val_count"] == VAL_IMAGES
    tokens = np.load(repo / "data/tokens/val.npy")
    assert tokens.shape == (VAL_IMAGES, 256) and int(tokens.max()) < 1024
    transformer = json.loads((repo / "models/transformer/config.json").read_text())
    assert transformer["model"]["n_embd"] == overlay["transformer"]["n_embd"] == 768
    assert transformer["model"]["n_head"] == overlay["transformer"]["n_head"]
    assert transformer["model"]["n_layer"] == overlay["transformer"]["n_layer"]
    if overlay["vqgan"]["init"]:
        assert "discriminator tensors from" in out, "the checkpoint's discriminator starts the fine-tune"

    grid = pd.read_csv(repo / "results/grid.csv")
    decoded = grid[grid.method == "maskgit"]
    axes = overlay["eval"]
    assert set(decoded["mask"]) == set(axes["masks"]) and set(decoded.schedule) == set(axes["schedules"])
    assert set(decoded["T"]) == set(axes["T"]) and set(axes["sweet_spots"]) <= set(decoded.sweet_spot)
    assert (grid.status == "ok").all() and grid[["psnr_masked", "ssim_masked", "lpips_masked"]].notna().all().all()
    assert grid.fid.notna().all() == axes["fid"], "FID where the profile turns it on, through the hub's backbone"
    metrics = json.loads((repo / "metrics/eval.json").read_text())
    assert metrics["profile"] == profile

    mlflow.set_tracking_uri(f"sqlite:///{repo / 'mlflow.db'}")
    for experiment in ("vqgan", "transformer", "eval-grid"):
        runs = mlflow.search_runs(experiment_names=[experiment], filter_string=f"tags.profile = '{profile}'")
        assert len(runs) >= 1, f"no {experiment} run tagged profile={profile}"
    cells = mlflow.search_runs(experiment_names=["eval-grid"])
    assert len(cells) == len(grid) + 1, "the parent run and one child per cell"
    assert "Data and pipelines are up to date" in run_ok(["dvc", "repro"], repo, env)

