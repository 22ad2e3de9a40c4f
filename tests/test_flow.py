import json
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import lpips
import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from prefect.settings import PREFECT_API_URL, PREFECT_TASKS_REFRESH_CACHE, temporary_settings

from maskgit_inpaint import evaluation, grid_report, perceptual, tracking
from conftest import remake_masks, stage_env, write_tiny_params


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

    def recorded(spec, mask, schedule, T, ks, token_temperature):
        cell = (mask, schedule, T)
        calls.append(cell)
        if fail(cell, calls.count(cell)):
            raise RuntimeError(f"injected failure of {cell}")
        return real(spec, mask, schedule, T, ks, token_temperature)

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

    # Every metric of every cell has an interval about its value (SWD's centred on it, so it holds it too).
    for metric in ["psnr", "psnr_masked", "ssim_masked", "swd", "swd_masked", "lpips_masked"]:
        assert (df[f"{metric}_lo"] <= df[metric] + 1e-9).all() and (df[metric] <= df[f"{metric}_hi"] + 1e-9).all()
        assert (df[f"{metric}_hi"] > df[f"{metric}_lo"]).any()
    assert df.fid_lo.isna().all()  # no FID interval: eval.json says why
    verdicts = df[[c for c in df.columns if "_vs_" in c]].stack().dropna()
    assert set(verdicts) <= {"better", "worse", "tied"} and len(verdicts) > 0

    summary = json.loads((grid_project / "metrics/eval_summary.json").read_text())
    assert set(summary["masks"]) == {"center", "thick"} and summary["unavailable"] == {} and "fid" in summary["no_interval"]
    assert summary["selection_images"] + summary["report_images"] == 6
    pick = summary["masks"]["center"]["picks"]["psnr_masked"]
    chosen = decoded[(decoded["mask"] == "center") & (decoded.schedule == pick["cell"]["schedule"])
                     & (decoded["T"] == pick["cell"]["T"]) & (decoded.sweet_spot == pick["cell"]["sweet_spot"])]
    assert len(chosen) == 1 and pick["report"]["lo"] <= pick["report"]["value"] <= pick["report"]["hi"]
    assert set(pick["against"]) == {"telea", "vq_ceiling", "t1"} or pick["cell"]["T"] == 1
    assert pick["tied_count"] == len(pick["tied"])

    # What `dvc metrics show` reads: one level, the profile's name, then numbers only, per mask kind and headline metric.
    metrics = json.loads((grid_project / "metrics/eval.json").read_text(), parse_constant=_not_json)
    assert metrics.pop("profile") == "embedded" and all(type(v) in (int, float) for v in metrics.values())
    assert metrics["cells"] == len(df) and metrics["failed_cells"] == 0 and metrics["report_images"] == summary["report_images"]
    keys = {"cells", "failed_cells", "report_images"}
    for mask in ("center", "thick"):
        for metric in ("psnr_masked", "swd_masked", "lpips_masked"):
            best = f"{mask}.best_{metric}"
            keys |= {best, f"{best}_lo", f"{best}_hi", f"{best}_ties", f"{mask}.telea_{metric}", f"{mask}.vq_ceiling_{metric}"}
            assert metrics[f"{best}_ties"] == summary["masks"][mask]["picks"][metric]["tied_count"]
            assert {best, f"{mask}.telea_{metric}", f"{mask}.vq_ceiling_{metric}"} <= set(metrics)
            report = summary["masks"][mask]["picks"][metric]["report"]
            if report["lo"] is None:  # a 3-image report half can leave a set-level interval undefined: its keys are left out
                assert f"{best}_lo" not in metrics and f"{best}_hi" not in metrics
            else:
                assert metrics[f"{best}_lo"] <= metrics[best] <= metrics[f"{best}_hi"]
    assert set(metrics) <= keys and "center.best_psnr_masked_lo" in metrics
    assert metrics["center.best_psnr_masked"] == pytest.approx(pick["report"]["value"])

    per_image = pd.read_parquet(grid_project / "results/grid_per_image.parquet")
    # The baselines in eval.json are on the report half, as the pick is.
    telea_report = per_image[(per_image.method == "telea") & (per_image["mask"] == "center") & (per_image.metric == "psnr_masked")
                             & (per_image.half == "report")]
    assert metrics["center.telea_psnr_masked"] == pytest.approx(telea_report.value.mean())
    assert set(per_image.metric) == {"psnr", "psnr_masked", "ssim", "ssim_masked", "lpips", "lpips_masked"}
    assert len(per_image) == len(df) * 6 * 6 and set(per_image.image) == set(range(6)) and set(per_image.replicate) == {0}
    # The table's per-image means are the means of the per-image file.
    means = per_image[per_image.metric == "psnr_masked"].groupby(["method", "mask", "schedule", "token_temperature", "T", "sweet_spot"], dropna=False).value.mean()
    assert sorted(means) == pytest.approx(sorted(df.psnr_masked), abs=1e-4)
    comparisons = pd.read_csv(grid_project / "results/grid_comparisons.csv")
    assert set(comparisons.reference) == {"best", "telea", "vq_ceiling", "t1"}
    assert (comparisons[comparisons.reference == "best"].images == "report half").all()
    tested = comparisons.dropna(subset=["p"])
    assert len(tested) > 0.9 * len(comparisons) and tested.p_holm.ge(tested.p - 1e-12).all()

    pictures = ["heatmap_psnr_masked.png", "heatmap_T_swd_masked.png", "heatmap_lpips_masked.png", "samples_center.png", "samples_thick.png"]
    for name in ["grid.parquet", "grid.md", *pictures]:
        assert (grid_project / "results" / name).stat().st_size > 0
    assert " *" in (grid_project / "results/grid.md").read_text()  # the picks are marked

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
    assert "results/grid_per_image.parquet" in {f.path for f in mlflow.MlflowClient().list_artifacts(parent_id, "results")}
    assert parents["tags.best_set.center.swd_masked"][0]
    # The cells tied with the best are one search away.
    tied = mlflow.search_runs(experiment_names=["eval-grid"],
                              filter_string=f"tags.mlflow.parentRunId = '{parent_id}' and tags.`in_best_set.swd_masked` = 'true'")
    in_set = 1 + len(summary["masks"]["center"]["picks"]["swd_masked"]["tied"]) + 1 + len(summary["masks"]["thick"]["picks"]["swd_masked"]["tied"])
    assert len(tied) == in_set
    assert {"metrics.swd_masked_lo", "metrics.swd_masked_hi"} <= set(children.columns)
    assert parents["metrics.center.best_swd_masked"][0] == pytest.approx(metrics["center.best_swd_masked"])

    # A second run with one more T decodes only the new trajectories; the rest come from the cache.
    calls.clear()
    eval_grid(params_file="params.yaml", T=[1, 2, 3])
    assert sorted(calls) == sorted((m, s, 2) for m in ("center", "thick") for s in ("linear", "cosine"))
    assert set(pd.read_csv(grid_project / "results/grid.csv")["T"].dropna()) == {1, 2, 3}
    tables = {name: (grid_project / name).read_bytes() for name in ("results/grid.csv", "results/grid.md", "metrics/eval.json")}
    calls.clear()
    evaluation._loaded.clear()  # as in a fresh process: no model, image or backbone in memory
    eval_grid(params_file="params.yaml", T=[1, 2, 3])
    assert calls == []  # the same grid again: every trajectory from the cache
    assert evaluation._loaded == {}  # and publishing it loaded nothing
    assert {name: (grid_project / name).read_bytes() for name in tables} == tables
    assert (grid_project / "results/samples_center.png").stat().st_size > 0

    info = subprocess.run([str(Path(sys.executable).with_name("maskgit-inpaint")), "info"], cwd=grid_project, capture_output=True, text=True)
    assert info.returncode == 0, info.stderr
    pick = json.loads((grid_project / "metrics/eval_summary.json").read_text())["masks"]["center"]["picks"]["psnr_masked"]
    assert f"grid [center]: best psnr_masked: {pick['name']}, " in info.stdout and "on the report half" in info.stdout


def _not_json(constant: str):
    raise AssertionError(f"eval.json holds {constant}, which is not JSON")


def test_a_failing_cell_is_retried_then_marked_while_the_grid_finishes(prefect_server, grid_project, monkeypatch):
    import flows.eval_grid as grid_flow
    from flows.eval_grid import eval_grid

    for name in ("trajectory", "telea", "vq_ceiling"):  # the same retries, without their 5 s pauses
        monkeypatch.setattr(grid_flow, name, getattr(grid_flow, name).with_options(retry_delay_seconds=0))

    write_tiny_params(grid_project / "params.yaml", eval={"seed": 7, "masks": ["center"], "T": [3]})  # a new seed: no cache hits

    remake_masks(grid_project)
    flaky, broken = ("center", "linear", 3), ("center", "cosine", 3)
    calls = _trajectory_calls(monkeypatch, fail=lambda cell, attempt: cell == broken or (cell == flaky and attempt == 1))

    def broken_telea(spec, mask):
        raise RuntimeError("injected Telea failure")

    monkeypatch.setattr(evaluation, "telea", broken_telea)
    eval_grid(params_file="params.yaml")
    assert calls.count(flaky) == 2 and calls.count(broken) == 3  # first try + 2 retries

    df = pd.read_csv(grid_project / "results/grid.csv")
    # A baseline that fails after its retries is a row that says so; the grid and the other references stand.
    telea = df[df.method == "telea"]
    assert len(telea) == 1 and telea.status.item().startswith("failed: RuntimeError: injected Telea failure")
    failed = df[(df.status != "ok") & (df.method == "maskgit")]
    assert set(zip(failed.schedule, failed["T"])) == {("cosine", 3)} and len(failed) == 3
    assert failed.status.str.contains("injected failure").all() and failed.psnr.isna().all()
    assert (df[df.schedule == "linear"].status == "ok").all()
    comparisons = pd.read_csv(grid_project / "results/grid_comparisons.csv")
    assert set(comparisons.reference) == {"best", "vq_ceiling", "t1"}
    # Offline, without pretrained backbones: the perceptual columns say why instead of showing numbers.
    summary = json.loads((grid_project / "metrics/eval_summary.json").read_text(), parse_constant=_not_json)
    assert summary["failed_cells"] == 4 and set(summary["unavailable"]) == {"lpips", "lpips_masked", "fid"}
    assert summary["masks"]["center"]["telea"]["status"].startswith("failed")
    metrics = json.loads((grid_project / "metrics/eval.json").read_text(), parse_constant=_not_json)
    assert metrics["failed_cells"] == 4 and "center.vq_ceiling_psnr_masked" in metrics
    assert not any("lpips" in key or "telea" in key for key in metrics)  # no backbone, no Telea row: no figure
    assert df[["lpips", "lpips_masked", "fid"]].isna().all().all()
    assert "unavailable" in (grid_project / "results/grid.md").read_text()


def test_a_grid_whose_every_cell_fails_publishes_nothing(prefect_server, grid_project, monkeypatch):
    import flows.eval_grid as grid_flow
    from flows.eval_grid import eval_grid

    for name in ("trajectory", "telea", "vq_ceiling"):
        monkeypatch.setattr(grid_flow, name, getattr(grid_flow, name).with_options(retry_delay_seconds=0))
    write_tiny_params(grid_project / "params.yaml", eval={"seed": 17, "masks": ["center"], "T": [1]})
    remake_masks(grid_project)

    def no_models(spec):
        raise FileNotFoundError("injected: models/vqgan missing")

    monkeypatch.setattr(evaluation, "load_data", no_models)
    with pytest.raises(grid_report.NothingScored, match="all 4 cells failed, the first with failed: FileNotFoundError: injected"):
        eval_grid(params_file="params.yaml")
    assert not (grid_project / "results").exists() and not (grid_project / "metrics/eval.json").exists()


def test_a_tracking_store_that_is_down_costs_no_results(prefect_server, grid_project, monkeypatch):
    from flows.eval_grid import eval_grid

    write_tiny_params(grid_project / "params.yaml", eval={"seed": 11, "masks": ["center"], "T": [1]})

    remake_masks(grid_project)
    with socket.socket() as free:  # a port nobody listens on: a tracking server that is down
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with pytest.warns(grid_report.TrackingUnavailable, match="results/ and metrics/eval.json are complete"):
        eval_grid(params_file="params.yaml")
    df = pd.read_csv(grid_project / "results/grid.csv")
    assert (df.status == "ok").all() and len(df) == 4  # T = 1 under 2 schedules, 2 baselines
    assert json.loads((grid_project / "metrics/eval.json").read_text())["cells"] == 4
    note = (grid_project / "results/NOT_LOGGED.txt").read_text()
    assert f"127.0.0.1:{port}" in note and "dvc repro --force --single-item eval_grid" in note


def _timeless(project) -> pd.DataFrame:
    """The grid table without what is measured, not computed: the seconds per image."""
    return pd.read_csv(project / "results/grid.csv").drop(columns=["seconds_per_image"])


PAUSE_AT_THIRD_TRAJECTORY = """
import sys, time
from pathlib import Path
from maskgit_inpaint import evaluation
real, calls = evaluation.run_trajectory, []
def paused(*args):
    calls.append(args[1:4])
    Path("decoded.txt").write_text(repr(calls))
    if sys.argv[1] == "pause" and len(calls) == 3:
        Path("paused").touch()
        time.sleep(600)
    return real(*args)
evaluation.run_trajectory = paused
from flows.eval_grid import eval_grid
eval_grid(params_file="params.yaml")
"""


def test_a_killed_grid_resumes_to_the_same_table_and_uncached_runs_agree(prefect_server, grid_project, tmp_path):
    from flows.eval_grid import eval_grid

    write_tiny_params(grid_project / "params.yaml", eval={"seed": 13, "masks": ["center"], "T": [1, 3]})

    remake_masks(grid_project)
    eval_grid(params_file="params.yaml")
    uninterrupted = _timeless(grid_project)
    with temporary_settings({PREFECT_TASKS_REFRESH_CACHE: True}):  # the same params again, every cell recomputed
        eval_grid(params_file="params.yaml")
    pd.testing.assert_frame_equal(_timeless(grid_project), uninterrupted)

    # Another process, with a cache of its own, is SIGKILLed while decoding its third trajectory.
    shutil.rmtree(grid_project / "results")
    env = stage_env({"PREFECT_HOME": str(tmp_path / "own-cache"), "PREFECT_API_URL": PREFECT_API_URL.value()})
    proc = subprocess.Popen([sys.executable, "-c", PAUSE_AT_THIRD_TRAJECTORY, "pause"], cwd=grid_project, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while not (grid_project / "paused").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert (grid_project / "paused").exists(), proc.stderr.read() if proc.poll() is not None else "no pause within 240 s"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (grid_project / "results").exists()  # nothing half-written
    rerun = subprocess.run([sys.executable, "-c", PAUSE_AT_THIRD_TRAJECTORY, "go"], cwd=grid_project, env=env,
                           capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert len(eval((grid_project / "decoded.txt").read_text())) == 1  # the two finished before the kill came from the cache
    pd.testing.assert_frame_equal(_timeless(grid_project), uninterrupted)


def test_token_temperatures_are_an_axis_and_a_later_start_shares_no_first_step(prefect_server, grid_project, monkeypatch):
    from flows.eval_grid import eval_grid

    write_tiny_params(grid_project / "params.yaml", eval={"seed": 19, "masks": ["center"], "T": [1, 3], "token_temperature": [1.0, 0.5]})
    remake_masks(grid_project)
    calls = _trajectory_calls(monkeypatch)
    eval_grid(params_file="params.yaml")
    df = pd.read_csv(grid_project / "results/grid.csv")
    decoded = df[df.method == "maskgit"]
    assert set(decoded.token_temperature) == {1.0, 0.5} and len(decoded) == 2 * 2 * (1 + 3)  # tau x schedules x cells
    assert sorted(calls) == sorted([("center", "linear", 1)] * 2 + [("center", s, 3) for s in ("linear", "cosine")] * 2)
    for tau, cells in decoded.groupby("token_temperature"):  # step 1 is one decode per temperature, shared by every T
        assert cells[cells.sweet_spot == 1].psnr_masked.nunique() == 1
    first = decoded[decoded.sweet_spot == 1].groupby("token_temperature").psnr_masked.first()
    assert first[1.0] != first[0.5], "a lower temperature draws other tokens"
    by_area = pd.read_csv(grid_project / "results/grid_by_area.csv")
    assert set(by_area.area) == {"20-30%"} and (by_area.n_images == 6).all()  # the center box hides 25% of every image
    one_bucket = by_area.merge(df, on=["method", "mask", "schedule", "token_temperature", "T", "sweet_spot"], suffixes=("", "_all"))
    assert np.allclose(one_bucket.swd_masked, one_bucket.swd_masked_all) and np.allclose(one_bucket.psnr_masked, one_bucket.psnr_masked_all)

    write_tiny_params(grid_project / "params.yaml", eval={"seed": 19, "masks": ["center"], "T": [3], "sweet_spots": [2], "token_temperature": [1.0],
                                                          "start_step": 1})
    calls.clear()
    eval_grid(params_file="params.yaml")
    decoded = pd.read_csv(grid_project / "results/grid.csv").query("method == 'maskgit'")
    assert sorted(calls) == [("center", "cosine", 3), ("center", "linear", 3)], "no T = 1 trajectory to share"
    assert set(decoded.sweet_spot) == {2, 3} and (decoded.status == "ok").all()
