import json
import shutil

import lpips
import mlflow
import pandas as pd
import pytest
import torch
from prefect.testing.utilities import prefect_test_harness

from maskgit_inpaint import evaluation, perceptual, tracking
from conftest import write_tiny_params


@pytest.fixture(scope="module")
def prefect_server():
    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def grid_project(tiny_chain, tmp_path, monkeypatch):
    project = tmp_path / "project"
    shutil.copytree(tiny_chain, project, ignore=shutil.ignore_patterns("mlflow.db", "mlartifacts"))
    monkeypatch.chdir(project)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{project / 'mlflow.db'}")
    evaluation._loaded.clear()  # backbones are resolved when a spec is first loaded
    return project


@pytest.fixture
def small_backbones(monkeypatch):
    """Small stand-in networks for LPIPS and FID: they exercise the code path; their numbers mean nothing."""
    torch.manual_seed(0)
    lpips_net = lpips.LPIPS(net="alex", pretrained=True, pnet_rand=True, spatial=True, verbose=False).eval()
    fid_net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=2), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    monkeypatch.setattr(perceptual, "resolve_lpips", lambda device, download: perceptual.Backbone(lpips_net.to(device), None))
    monkeypatch.setattr(perceptual, "resolve_fid", lambda device, download: perceptual.Backbone(fid_net.to(device), None))


def _trajectory_calls(monkeypatch, fail=lambda cell, attempt: False):
    """Record every run_trajectory call; `fail(cell, attempt)` makes chosen attempts raise."""
    calls = []
    real = evaluation.run_trajectory

    def recorded(spec, mask, schedule, T, ks):
        cell = (mask, schedule, T)
        calls.append(cell)
        if fail(cell, calls.count(cell)):
            raise RuntimeError(f"injected failure of {cell}")
        return real(spec, mask, schedule, T, ks)

    monkeypatch.setattr(evaluation, "run_trajectory", recorded)
    return calls


def test_eval_grid_flow_tables_tracks_and_caches(prefect_server, grid_project, small_backbones, monkeypatch):
    from flows.eval_grid import eval_grid

    calls = _trajectory_calls(monkeypatch)
    eval_grid(params_file="params.yaml")
    plan = [(m, s, T) for m in ("center", "thick") for s in ("linear", "cosine") for T in (1, 3)]
    # One T = 1 trajectory per mask kind (under the first schedule) serves every k = 1 cell.
    assert sorted(calls) == sorted([(m, "linear", 1) for m in ("center", "thick")] + [(m, s, 3) for m in ("center", "thick") for s in ("linear", "cosine")])

    df = pd.read_csv(grid_project / "results/grid.csv")
    decoded = df[df.method == "maskgit"]
    expected = {(m, s, T, k) for m, s, T in plan for k in {1, 2, T} if k <= T}
    assert set(zip(decoded["mask"], decoded.schedule, decoded["T"], decoded.sweet_spot)) == expected
    assert len(decoded) == len(expected)
    baselines = df[df.method != "maskgit"]
    assert set(zip(baselines.method, baselines["mask"])) == {(m, k) for m in ("vq_ceiling", "telea") for k in ("center", "thick")}
    assert baselines[["schedule", "T", "sweet_spot"]].isna().all().all()
    assert (df.status == "ok").all() and df[evaluation.METRICS].notna().all().all()
    # Masked-region PSNR can only be lower than whole-image PSNR: known pixels are copied back.
    assert (df.psnr_masked <= df.psnr + 1e-6).all()
    assert (df[["swd", "swd_masked", "lpips", "lpips_masked"]] > 0).all().all()
    # The first step depends on neither schedule nor T: the k = 1 cells of a mask kind are one decode.
    first = decoded[decoded.sweet_spot == 1].groupby("mask")[["psnr_masked", "swd_masked"]].nunique()
    assert (first == 1).all().all()

    summary = json.loads((grid_project / "metrics/eval.json").read_text())
    assert set(summary["masks"]) == {"center", "thick"} and summary["unavailable"] == {}
    center = decoded[decoded["mask"] == "center"]
    assert summary["masks"]["center"]["best"]["psnr_masked"] == pytest.approx(center.psnr_masked.max())
    pictures = ["heatmap_psnr_masked.png", "heatmap_T_swd_masked.png", "heatmap_lpips_masked.png", "samples_center.png", "samples_thick.png"]
    for name in ["grid.parquet", "grid.md", *pictures]:
        assert (grid_project / "results" / name).stat().st_size > 0

    mlflow.set_tracking_uri(tracking.tracking_uri())
    parents = mlflow.search_runs(experiment_names=["eval-grid"], filter_string="tags.fingerprint != ''")
    assert len(parents) == 1
    parent_id = parents.run_id[0]
    children = mlflow.search_runs(experiment_names=["eval-grid"], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'")
    assert len(children) == len(df)
    assert set(children["params.method"]) == {"maskgit", "vq_ceiling", "telea"}
    assert children["metrics.lpips_masked"].max() == pytest.approx(df.lpips_masked.max())
    logged = {f.path for f in mlflow.MlflowClient().list_artifacts(parent_id, "figures")}
    assert {f"figures/{name}" for name in pictures} <= logged

    # A second run with one more T decodes only the new trajectories; the rest come from the cache.
    calls.clear()
    eval_grid(params_file="params.yaml", T=[1, 2, 3])
    assert sorted(calls) == sorted((m, s, 2) for m in ("center", "thick") for s in ("linear", "cosine"))
    assert set(pd.read_csv(grid_project / "results/grid.csv")["T"].dropna()) == {1, 2, 3}
    calls.clear()
    eval_grid(params_file="params.yaml", T=[1, 2, 3])
    assert calls == []  # the same grid again: every trajectory from the cache


def _not_json(constant: str):
    raise AssertionError(f"eval.json holds {constant}, which is not JSON")


def test_a_failing_cell_is_retried_then_marked_while_the_grid_finishes(prefect_server, grid_project, monkeypatch):
    from flows.eval_grid import eval_grid

    write_tiny_params(grid_project / "params.yaml", eval={"seed": 7, "masks": ["center"], "T": [3]})  # a new seed: no cache hits
    flaky, broken = ("center", "linear", 3), ("center", "cosine", 3)
    calls = _trajectory_calls(monkeypatch, fail=lambda cell, attempt: cell == broken or (cell == flaky and attempt == 1))
    eval_grid(params_file="params.yaml")
    assert calls.count(flaky) == 2 and calls.count(broken) == 3  # first try + 2 retries

    df = pd.read_csv(grid_project / "results/grid.csv")
    failed = df[df.status != "ok"]
    assert set(zip(failed.schedule, failed["T"])) == {("cosine", 3)} and len(failed) == 3
    assert failed.status.str.contains("injected failure").all() and failed.psnr.isna().all()
    assert (df[df.schedule == "linear"].status == "ok").all()
    # Offline, without pretrained backbones: the perceptual columns say why instead of showing numbers.
    summary = json.loads((grid_project / "metrics/eval.json").read_text(), parse_constant=_not_json)
    assert summary["failed_cells"] == 3 and set(summary["unavailable"]) == {"lpips", "lpips_masked", "fid"}
    assert df[["lpips", "lpips_masked", "fid"]].isna().all().all()
    assert "unavailable" in (grid_project / "results/grid.md").read_text()
