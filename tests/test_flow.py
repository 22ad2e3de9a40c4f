import shutil

import mlflow
import pandas as pd
import pytest
from prefect.testing.utilities import prefect_test_harness

from maskgit_inpaint import evaluation, tracking


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
    return project


def test_eval_grid_flow_tables_tracks_and_caches(prefect_server, grid_project, monkeypatch):
    from flows.eval_grid import eval_grid

    calls = []
    real = evaluation.run_trajectory
    monkeypatch.setattr(evaluation, "run_trajectory", lambda spec, s, T, ks: calls.append((s, T)) or real(spec, s, T, ks))

    best = eval_grid(params_file="params.yaml")
    assert sorted(calls) == [("cosine", 2), ("cosine", 3), ("linear", 2), ("linear", 3)]

    df = pd.read_csv(grid_project / "results/grid.csv")
    decoded = df[df.method == "maskgit"]
    expected = {(s, T, k) for s in ("linear", "cosine") for T in (2, 3) for k in {1, 2, T} if k <= T}
    assert set(zip(decoded.schedule, decoded["T"], decoded.sweet_spot)) == expected
    assert len(decoded) == len(expected)
    assert (df.status == "ok").all() and df[evaluation.METRICS].notna().all().all()
    assert (df["mask"] == "center").all() and set(df.method) == {"maskgit", "vq_ceiling", "telea"}
    # Masked-region PSNR can only be lower than whole-image PSNR: known pixels are copied back.
    assert (df.psnr_masked <= df.psnr + 1e-6).all()
    assert (df[["swd", "swd_masked"]] > 0).all().all()  # realism: generated vs real patch sets never coincide here
    assert best["psnr_masked"] == decoded.psnr_masked.max()
    for name in ("grid.parquet", "grid.md", "heatmap_psnr_masked.png", "heatmap_ssim_masked.png", "heatmap_swd_masked.png", "samples.png"):
        assert (grid_project / "results" / name).stat().st_size > 0

    mlflow.set_tracking_uri(tracking.tracking_uri())
    parents = mlflow.search_runs(experiment_names=["eval-grid"], filter_string="tags.fingerprint != ''")
    assert len(parents) == 1
    parent_id = parents.run_id[0]
    children = mlflow.search_runs(experiment_names=["eval-grid"], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'")
    assert len(children) == len(df)
    assert set(children["params.method"]) == {"maskgit", "vq_ceiling", "telea"}
    assert children["metrics.psnr_masked"].max() == pytest.approx(df.psnr_masked.max())

    # A second run with one more T decodes only the new trajectories; the rest come from the cache.
    calls.clear()
    eval_grid(params_file="params.yaml", T=[2, 3, 4])
    assert sorted(calls) == [("cosine", 4), ("linear", 4)]
    assert set(pd.read_csv(grid_project / "results/grid.csv")["T"].dropna()) == {2, 3, 4}
