"""MLflow on a real tracking server (sqlite backend, proxied artifacts), a server that is down or refuses, and a DVC remote."""
import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from maskgit_inpaint import grid_report, tracking
from conftest import commit_all, dvc_env, free_port, project_repo, run_ok, run_stage, stop_process_group, write_tiny_params

SERVER_START_S = 120
# A stage's own imports (torch, mlflow: 5-14 s on this loaded 2-core machine) plus the probe; MLflow's client
# alone, with its default 7 retries and backoff, would take minutes to give up.
STAGE_REFUSAL_S = 60



@dataclass(frozen=True)
class TrackingServer:
    uri: str
    artifacts: Path  # --artifacts-destination: what the server stores, clients upload through it


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """`mlflow server` on a free loopback port: sqlite backend and proxied artifacts in a temp dir, one worker."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    log = (root / "server.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{root / 'server.db'}", "--artifacts-destination", str(root / "artifacts")],
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}, cwd=root, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + SERVER_START_S
        while True:
            assert proc.poll() is None, f"mlflow server exited:\n{(root / 'server.log').read_text()[-3000:]}"
            assert time.time() < deadline, f"mlflow server not healthy after {SERVER_START_S} s"
            with contextlib.suppress(OSError):
                if urllib.request.urlopen(f"{uri}/health", timeout=2).status == 200:
                    break
            time.sleep(0.5)
        yield TrackingServer(uri, root / "artifacts")
    finally:
        stop_process_group(proc, timeout=20)
        log.close()


def _grid_params(params_file: Path) -> None:
    write_tiny_params(params_file, eval={"masks": ["center"], "T": [1, 2]})  # 2 schedules x (k 1; k 1, 2) + 2 baselines


@pytest.mark.scale_out
def test_the_chain_logs_to_a_tracking_server_and_a_fresh_clone_pulls_it_from_a_dvc_remote(mlflow_server, tmp_path):
    client = MlflowClient(mlflow_server.uri)
    client.create_experiment("vqgan")  # made before the tag existed: the stage tags it
    repo = project_repo(tmp_path / "repo", _grid_params)
    server = {"MLFLOW_TRACKING_URI": mlflow_server.uri}
    # The flow's lines are Prefect's INFO logs, on stderr (conftest keeps Prefect at WARNING).
    done = subprocess.run(["dvc", "repro"], cwd=repo, env=dvc_env(repo, {**server, "PREFECT_LOGGING_LEVEL": "INFO"}),
                          capture_output=True, text=True)
    said = done.stdout + done.stderr
    assert done.returncode == 0, said[-3000:]
    assert "viewStateShareKey=grid-headline" in said and "View run" not in said  # the grid's own link, not two per cell
    assert not (repo / "mlflow.db").exists() and not (repo / "mlartifacts").exists()  # nothing went to a local store

    experiments = {e.name: e for e in client.search_experiments()}
    for name in ("vqgan", "transformer", "eval-grid", "models"):
        assert experiments[name].tags[tracking.EXPERIMENT_KIND_TAG] == tracking.MODEL_TRAINING, name
        assert experiments[name].artifact_location.startswith("mlflow-artifacts:"), "artifacts go through the server"
    runs = {name: client.search_runs([experiments[name].experiment_id]) for name in ("vqgan", "transformer")}
    assert all(len(found) == 1 and found[0].info.status == "FINISHED" for found in runs.values())
    grid_runs = client.search_runs([experiments["eval-grid"].experiment_id])
    parents = [r for r in grid_runs if "fingerprint" in r.data.tags]
    assert len(parents) == 1
    parent = parents[0]
    children = [r for r in grid_runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    cells = pd.read_csv(repo / "results/grid.csv")
    assert len(children) == len(cells) == len(grid_runs) - 1 == 8
    eval_json = json.loads((repo / "metrics/eval.json").read_text())
    assert parent.data.metrics["center.best_swd_masked"] == pytest.approx(eval_json["center.best_swd_masked"])
    assert {"center.best_swd_masked_lo", "center.best_swd_masked_hi", "center.telea_swd_masked"} <= set(parent.data.metrics)
    views = {key[len(tracking.SHARED_VIEW_TAG):]: json.loads(value) for key, value in experiments["eval-grid"].tags.items()
             if key.startswith(tracking.SHARED_VIEW_TAG)}
    assert "metrics.`center.best_swd_masked`" in views["grid-headline"]["selectedColumns"]
    assert parent.info.run_id in views["grid-cells"]["searchFilter"]

    versions = client.search_model_versions("name = 'maskgit-inpaint'")  # register_model: the pair, registered on the server
    assert [v.version for v in versions] == ["1"] and (version := versions[0]) and client.get_run(version.run_id).info.experiment_id == experiments["models"].experiment_id

    # Artifacts: on the server's destination, and back through the server byte for byte.
    vqgan_run = runs["vqgan"][0].info
    stored = mlflow_server.artifacts / vqgan_run.experiment_id / vqgan_run.run_id / "artifacts/model/model.safetensors"
    assert stored.read_bytes() == (repo / "models/vqgan/model.safetensors").read_bytes()
    downloaded = mlflow.artifacts.download_artifacts(run_id=vqgan_run.run_id, artifact_path="model", dst_path=str(tmp_path / "dl"),
                                                     tracking_uri=mlflow_server.uri)
    assert (Path(downloaded) / "model.safetensors").read_bytes() == stored.read_bytes()
    logged = {a.path for folder in (None, "figures") for a in client.list_artifacts(parent.info.run_id, folder)}
    assert {"grid.json", "results", "figures/heatmap_swd_masked.png"} <= logged

    # DVC: push to a remote, clone, pull: up to date without retraining.
    commit_all(repo, "the chain's lock and metrics")
    run_ok(["dvc", "remote", "add", "-d", "store", str(tmp_path / "remote")], repo)
    run_ok(["dvc", "push"], repo)
    commit_all(repo, "the remote")
    clone = tmp_path / "clone"
    run_ok(["git", "clone", "-q", str(repo), str(clone)], tmp_path)
    run_ok(["dvc", "pull"], clone)
    assert "Data and pipelines are up to date" in run_ok(["dvc", "status"], clone)
    out = run_ok(["dvc", "repro"], clone, server)
    assert "Running stage" not in out and "Data and pipelines are up to date" in out
    for path in ("models/vqgan/model.safetensors", "models/transformer/model.safetensors", "results/grid.csv"):
        assert (clone / path).read_bytes() == (repo / path).read_bytes(), path
    assert sorted(p.name for p in (clone / "data/tokens").iterdir()) == sorted(p.name for p in (repo / "data/tokens").iterdir())
    assert len(client.search_runs([experiments["vqgan"].experiment_id])) == 1, "nothing retrained"


@pytest.fixture
def ready_to_train(tiny_chain, tmp_path) -> Path:
    """A project with shards and tokens in place, but no models: a stage there would start training at once."""
    project = tmp_path / "project"
    shutil.copytree(tiny_chain, project, ignore=shutil.ignore_patterns("models", "checkpoints", "mlflow.db", "mlartifacts"))
    return project


def _refused_at_once(stage: str, project: Path, uri: str, reason: str) -> None:
    began = time.monotonic()
    with pytest.raises(tracking.TrackingServerUnreachable, match=re.escape(reason)):
        tracking.require_reachable(uri)
    assert time.monotonic() - began < tracking.PROBE_TIMEOUT_S + 1, "the probe itself takes a few seconds at most"
    began = time.monotonic()
    done = run_stage(stage, project, {"MLFLOW_TRACKING_URI": uri})
    elapsed = time.monotonic() - began
    said = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    assert done.returncode != 0 and elapsed < STAGE_REFUSAL_S, (done.returncode, elapsed)
    assert said == [f"{stage}: MLflow tracking server {uri} (MLFLOW_TRACKING_URI) {reason}: {tracking.FIX}"]
    assert 'README "MLflow on a tracking server"' in said[0] and "unset MLFLOW_TRACKING_URI" in said[0]
    assert not (project / "models").exists() and not (project / "checkpoints").exists(), "training started"


def test_a_tracking_server_that_is_down_stops_the_training_stages_before_they_load_anything(ready_to_train):
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    for stage in ("finetune_vqgan", "train_transformer"):
        _refused_at_once(stage, ready_to_train, uri, "refused the connection (nothing listens there)")


class _Refusing(BaseHTTPRequestHandler):
    status = 404

    def do_GET(self):
        self.send_error(self.status)

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def _http_server(status: int):
    """A plain HTTP server on loopback that answers every request with `status`: not an MLflow server."""
    handler = type("Answering", (_Refusing,), {"status": status})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.mark.scale_out
@pytest.mark.parametrize("status, reason", [(404, "answered HTTP 404 Not Found to the MLflow API"),
                                            (403, "answered HTTP 403 Forbidden to the MLflow API")])
def test_a_server_that_answers_with_an_http_error_is_refused_before_training(ready_to_train, status, reason):
    with _http_server(status) as uri:
        _refused_at_once("finetune_vqgan", ready_to_train, uri, reason)


@pytest.mark.scale_out
def test_a_server_that_accepts_but_never_answers_is_refused_after_the_probe_timeout(ready_to_train):
    with socket.socket() as silent:  # the kernel accepts connections into the backlog; nobody ever reads them
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        uri = f"http://127.0.0.1:{silent.getsockname()[1]}"
        _refused_at_once("finetune_vqgan", ready_to_train, uri, f"did not answer within {tracking.PROBE_TIMEOUT_S:g} s")


def test_the_grid_names_a_server_that_is_down_at_its_start(capsys, monkeypatch):
    uri = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    grid_report.announce_tracking()
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"eval_grid: MLflow tracking server {uri} (MLFLOW_TRACKING_URI) refused the connection")
    assert tracking.FIX in line and "NOT_LOGGED.txt" in line and "\n" not in line


def test_experiments_are_tagged_model_training_and_carry_shared_runs_views(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    client = MlflowClient(tracking.tracking_uri())
    untagged = client.create_experiment("made-by-hand")
    assert tracking.EXPERIMENT_KIND_TAG not in client.get_experiment(untagged).tags
    assert tracking.experiment_id("made-by-hand") == untagged  # an existing experiment gets the tag
    created = tracking.experiment_id("new-one")
    for eid in (untagged, created):
        assert client.get_experiment(eid).tags[tracking.EXPERIMENT_KIND_TAG] == tracking.MODEL_TRAINING

    view = tracking.RunsView("best", params=("mask",), metrics=("center.best_swd_masked",), order_by_metric="swd_masked",
                             search_filter="tags.fingerprint != ''")
    url = tracking.share_runs_view(created, view)
    assert url == f"{tracking.UI_OF_LOCAL_STORES}/#/experiments/{created}/runs?workflowType=machine_learning&viewStateShareKey=best"
    state = json.loads(client.get_experiment(created).tags[tracking.SHARED_VIEW_TAG + "best"])
    assert state == {"selectedColumns": ["params.`mask`", "metrics.`center.best_swd_masked`"], "searchFilter": "tags.fingerprint != ''",
                     "orderByKey": "metrics.`swd_masked`", "orderByAsc": True}
    assert tracking.require_reachable() is None  # a local store needs no server
