"""The trained pair as an MLflow pyfunc model: saved, loaded with mlflow.pyfunc.load_model, served by `mlflow models serve`."""
from __future__ import annotations

import base64
import io
import json
import os
import shutil
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from packaging.requirements import Requirement
from PIL import Image

from maskgit_inpaint import config, inpaint, mlflow_model
from conftest import ROOT, free_port, run_stage, stop_process_group

SERVE_START_TIMEOUT = 120  # the scoring server imports torch and the package, then loads the pair


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


@pytest.fixture(scope="module")
def photo(tiny_chain) -> bytes:
    """A real picture of the tiny sample, enlarged to 80x60 (not the model's size, not square), as a PNG."""
    jpeg = sorted((tiny_chain / "data/raw").rglob("*.jpg"))[0]
    return _png(Image.open(jpeg).convert("RGB").resize((80, 60), Image.BICUBIC))


@pytest.fixture(scope="module")
def package(tiny_chain) -> inpaint.Package:
    """The tiny chain's pair with a grid summary that picks a center cell (as eval_summary.json holds it) and none for thick."""
    params = config.load(tiny_chain / "params.yaml")
    cell = {"mask": "center", "method": "maskgit", "schedule": "cosine", "T": 3, "sweet_spot": 2, "token_temperature": 1.0}
    summary = {"masks": {"center": {"picks": {"swd_masked": {"cell": cell, "name": "cosine T=3 k=2"}}}, "thick": {"picks": {}}}}
    return inpaint.Package(tiny_chain / "models/vqgan", tiny_chain / "models/transformer", params.eval, summary,
                           inpaint.training_note(profile=params.profile, source=params.data.source))


@pytest.fixture(scope="module")
def saved(package, tmp_path_factory) -> Path:
    trained_on = mlflow_model.TrainedOn(profile="embedded", source="embedded", shards="the tiny chain's shards")
    return mlflow_model.save(tmp_path_factory.mktemp("pyfunc") / "model", package, trained_on)


@pytest.fixture(scope="module")
def model(saved):
    return mlflow.pyfunc.load_model(str(saved))


def test_a_box_and_a_mask_are_filled_and_every_known_pixel_kept(model, package, photo):
    original = _pixels(photo)
    drawn = np.zeros(original.shape[:2], dtype=np.uint8)
    drawn[5:25, 40:75] = 255
    rows = {"image": [photo, photo], "box": ["10,20,30,25", None], "mask": [None, _png(Image.fromarray(drawn))]}
    answer = model.predict(pd.DataFrame(rows))
    assert list(answer.columns) == ["image", "settings", "notes"] and len(answer) == 2

    box = np.zeros(original.shape[:2], dtype=bool)
    box[20:45, 10:40] = True
    for i, hole in enumerate((box, drawn > 0)):
        completed = _pixels(answer["image"][i])
        assert completed.shape == original.shape
        assert (completed[~hole] == original[~hole]).all(), f"row {i}: a known pixel changed"
        assert answer["notes"][i].endswith(package.training_note)
    assert answer["settings"][0] == mlflow_model.describe(package.settings(inpaint.BOX_KIND))
    assert answer["settings"][1] == mlflow_model.describe(package.settings(inpaint.DRAWN_KIND))
    assert "held-out pick for center holes" in answer["settings"][0] and "no picks for mask kind thick" in answer["settings"][1]


def test_no_hole_given_means_the_center_kind_with_the_recommended_cell_and_params_override_it(model, package, photo):
    original = _pixels(photo)
    settings = package.settings(mlflow_model.DEFAULT_KIND)
    center = inpaint.hole_of_kind(mlflow_model.DEFAULT_KIND, (80, 60), resolution=32, f=4, seed=settings.seed,
                                  token_ratio=package.eval.random_token_ratio)
    answer = model.predict(pd.DataFrame({"image": [photo]}))
    completed = _pixels(answer["image"][0])
    assert (completed[~center] == original[~center]).all() and answer["settings"][0] == mlflow_model.describe(settings)

    overridden = model.predict(pd.DataFrame({"image": [photo]}), params={"schedule": "linear", "T": 2, "seed": 7})
    assert overridden["settings"][0].endswith("the request set T=2, schedule=linear, seed=7: schedule=linear T=2 sweet_spot=2 "
                                              f"token_temperature=1.0 temperature={package.eval.temperature} start_step=0 "
                                              "token_dilation=0 seed=7")


@pytest.mark.parametrize("row, params, message", [
    ({"box": "1,2,3"}, None, r"^box '1,2,3': give four integers x,y,w,h \(pixels; x,y = top-left corner\)$"),
    ({"box": "70,10,20,20"}, None, r"^box 70,10,20,20 does not lie inside the 80x60 image: .*x \+ w <= 80"),
    ({"box": "1,1,5,5", "kind": "thick"}, None, r"^give one of mask, box and kind per picture, not box and kind$"),
    ({"kind": "donut"}, None, r"^kind 'donut': choose one of center, thin, medium, thick, outpaint, random_tokens$"),
    ({}, {"T": 2, "sweet_spot": 3}, r"^params.sweet_spot 3: give 1 <= sweet_spot <= T = 2$"),
    ({}, {"schedule": "zigzag"}, r"^params.schedule 'zigzag': choose one of cosine, "),
    ({"image": b"not a picture"}, None, r"^image: cannot decode as an image .*; give a PNG, JPEG"),
])
def test_a_bad_request_says_which_field_and_the_fix(model, photo, row, params, message):
    with pytest.raises(MlflowException, match=message):
        model.predict(pd.DataFrame([{"image": photo, **row}]), params=params)


def test_load_package_and_the_recorded_requirements(saved, package):
    loaded = mlflow_model.load_package(str(saved))
    assert (loaded.eval, loaded.summary, loaded.training_note) == (package.eval, package.summary, package.training_note)
    assert (loaded.vqgan_dir / "model.safetensors").read_bytes() == (package.vqgan_dir / "model.safetensors").read_bytes()
    assert not (saved / "code").exists(), "the model imports the installed package: no code is copied into it"
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = {(r := Requirement(line)).name: r.specifier for line in declared}
    recorded = [Requirement(line) for line in (saved / "requirements.txt").read_text().split()]
    for req in recorded:  # MLflow infers nothing: exactly the installed versions of the project's own pins
        version = str(req.specifier).removeprefix("==")
        assert req.name in pins and str(req.specifier) == f"=={version}" and pins[req.name].contains(version), req
    assert {"torch", "torchvision", "mlflow", "numpy", "pillow", "pandas", "safetensors", "pydantic"} <= {r.name for r in recorded}
    with pytest.raises(inpaint.InpaintError, match=r"^.*models/vqgan: cannot load this MLflow model \(No such artifact: 'MLmodel'\)"):
        mlflow_model.load_package(str(package.vqgan_dir))


def test_the_cli_completes_with_a_saved_mlflow_model_and_its_recorded_picks(saved, photo, tmp_path):
    """`maskgit-inpaint inpaint --mlflow-model DIR` needs no workspace: the pair, settings and note come from the model."""
    image, out = tmp_path / "photo.png", tmp_path / "done.png"
    image.write_bytes(photo)
    cli = str(Path(sys.executable).with_name("maskgit-inpaint"))
    done = subprocess.run([cli, "inpaint", str(image), "-o", str(out), "--box", "20,10,30,25", "--mlflow-model", str(saved)],
                          cwd=tmp_path, capture_output=True, text=True)  # tmp_path has no params.yaml
    assert done.returncode == 0, done.stderr
    assert "cosine T=3 k=2" in done.stdout and "embedded sample" in done.stdout  # the recorded pick and training note
    before, after = _pixels(photo), _pixels(out.read_bytes())
    hole = inpaint.hole_from_box("20,10,30,25", (80, 60))
    assert after.shape == before.shape and (after[~hole] == before[~hole]).all() and (after[hole] != before[hole]).any()
    bad = subprocess.run([cli, "inpaint", str(image), "-o", str(out), "--mlflow-model", str(tmp_path / "nowhere")],
                         cwd=tmp_path, capture_output=True, text=True)
    assert bad.returncode != 0 and "nowhere: cannot load this MLflow model" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def _project(tiny_chain: Path, path: Path) -> Path:
    shutil.copytree(tiny_chain, path, ignore=shutil.ignore_patterns("mlflow.db", "mlartifacts"))
    return path



def test_the_stage_keeps_the_saved_model_when_the_store_is_down(tiny_chain, tmp_path):
    project = _project(tiny_chain, tmp_path / "project")
    down = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    done = run_stage("register_model", project, {"MLFLOW_TRACKING_URI": down, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert (project / "models/mlflow/MLmodel").is_file() and (project / "models/mlflow/artifacts/vqgan/model.safetensors").is_file()
    warning = next(line for line in done.stderr.splitlines() if "NotRegistered" in line)
    assert f"NotRegistered: MLflow store {down} could not take the model" in warning
    assert warning.endswith("models/mlflow is complete. Once the store is up, `dvc repro --force register_model` registers it")
    assert done.stdout.startswith("register_model: models/mlflow") and "not registered" in done.stdout


def _post(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def _ping(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


@pytest.mark.scale_out
def test_registered_model_is_served_by_mlflow_models_serve(tiny_chain, tmp_path, photo):
    project = _project(tiny_chain, tmp_path / "project")
    store = f"sqlite:///{project / 'mlflow.db'}"
    env = {"MLFLOW_TRACKING_URI": store}
    first = run_stage("register_model", project, env)
    assert first.returncode == 0, first.stderr[-3000:]
    assert f"registered maskgit-inpaint version 1 -> models:/maskgit-inpaint/1 in {store}" in first.stdout
    again = run_stage("register_model", project, env)  # same weights, same picks: no new version
    assert again.returncode == 0 and "unchanged: maskgit-inpaint version 1" in again.stdout, again.stderr[-3000:]
    versions = MlflowClient(store, registry_uri=store).search_model_versions("name = 'maskgit-inpaint'")
    assert [int(v.version) for v in versions] == [1] and versions[0].tags[mlflow_model.DIGEST_TAG]

    port = free_port()
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        server = subprocess.Popen(
            [str(Path(sys.executable).parent / "mlflow"), "models", "serve", "-m", "models:/maskgit-inpaint/latest",
             "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
            cwd=tmp_path, env={**os.environ, **env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + SERVE_START_TIMEOUT
        while not _ping(f"http://127.0.0.1:{port}/ping"):
            assert server.poll() is None and time.monotonic() < deadline, f"mlflow models serve did not come up:\n{log.read_text()[-3000:]}"
            time.sleep(0.5)
        image = base64.b64encode(photo).decode()
        status, answer = _post(f"http://127.0.0.1:{port}/invocations", {
            "dataframe_split": {"columns": ["image", "box"], "data": [[image, "10,20,30,25"]]}, "params": {"T": 2}})
        assert status == 200, answer
        row = answer["predictions"][0]
        completed, original = _pixels(base64.b64decode(row["image"])), _pixels(photo)
        known = np.ones(original.shape[:2], dtype=bool)
        known[20:45, 10:40] = False
        assert completed.shape == original.shape and (completed[known] == original[known]).all()
        assert "the request set T=2" in row["settings"] and "embedded sample" in row["notes"]

        status, answer = _post(f"http://127.0.0.1:{port}/invocations", {
            "dataframe_split": {"columns": ["image", "box"], "data": [[image, "70,10,20,20"]]}})
        assert status == 400 and answer["message"].endswith("box 70,10,20,20 does not lie inside the 80x60 image: need x,y >= 0, "
                                                            "w,h > 0, x + w <= 80, y + h <= 60"), answer
    finally:
        stop_process_group(server, timeout=30)
