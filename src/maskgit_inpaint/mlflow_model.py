"""The trained pair as one MLflow pyfunc model: `mlflow models serve` serves it, `mlflow.pyfunc.load_model` loads it.

A saved model (save(), log()) holds the two model directories as the artifacts
`vqgan/` and `transformer/`, and `package.json`: what a decode needs besides the
weights (the grid's eval params, its summary with the held-out picks when a grid
ran, the training note) and what the pair was trained on. The model's class is
InpaintModel, pickled by reference: it loads in any process where maskgit-inpaint
is installed (this project's venv, `--env-manager local`), so no code is copied
into the model (no code_paths), and the requirements MLflow records are this
project's own pins.

A request is a table, one row per picture: `image` (the encoded file's bytes) and
at most one of `mask` (a mask picture, white = fill), `box` ("x,y,w,h" in pixels)
and `kind` (an evaluation mask kind drawn over the whole picture); none: kind
center. The params schedule, T, sweet_spot and seed override the recommended
settings (inpaint.Package.settings: the grid's held-out pick for the hole's kind);
T without sweet_spot decodes all T steps. The answer has one row per picture:
`image` (PNG, the input's size, every known pixel unchanged), `settings` (where
they came from and their values) and `notes` (what the user should know, the
training note last).
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import io
import json
import logging
import re
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import Model, ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.types import ColSpec, DataType, ParamSchema, ParamSpec, Schema
from PIL import Image

from maskgit_inpaint import config, inpaint, masks, schedules, tracking
from maskgit_inpaint.models.checkpoint import CONFIG

PROJECT = "maskgit-inpaint"  # the distribution whose pins are the model's requirements
PACKAGE_FILE = "package.json"
PACKAGE_FORMAT = 1  # of package.json; a model of another format is re-saved by `dvc repro register_model`
DEFAULT_KIND = "center"  # the hole of a row that gives no mask, box or kind
EXPERIMENT = "models"  # one run per registered version; not `transformer`, whose runs are training runs with their curves
DIGEST_TAG = "content_digest"  # model-version tag: sha256 of the artifacts, so unchanged weights get no new version

SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec(DataType.binary, "image"), ColSpec(DataType.binary, "mask", required=False),
                   ColSpec(DataType.string, "box", required=False), ColSpec(DataType.string, "kind", required=False)]),
    outputs=Schema([ColSpec(DataType.binary, "image"), ColSpec(DataType.string, "settings"), ColSpec(DataType.string, "notes")]),
    params=ParamSchema([ParamSpec("schedule", DataType.string, None), ParamSpec("T", DataType.long, None),
                        ParamSpec("sweet_spot", DataType.long, None), ParamSpec("seed", DataType.long, None)]),
)
PARAM_NAMES = tuple(spec.name for spec in SIGNATURE.params.params)


@dataclass(frozen=True)
class TrainedOn:
    """What the pair was trained on, recorded beside the weights."""

    profile: str  # params.yaml's profile
    source: str  # data.source: "embedded", a Places365 copy, an image folder or archive
    shards: str  # what the shard stage read: manifest.json's source and layout, and its image counts


class NotRegistered(UserWarning):
    """The MLflow store could not take the model; the saved model directory is complete."""


@dataclass(frozen=True)
class Registered:
    """A model version in the MLflow registry."""

    name: str
    version: int
    uri: str  # models:/<name>/<version>
    new: bool  # False: a version with the same artifacts was there already, none was added
    tracking_uri: str


def _absent(value) -> bool:
    """A cell or param the request left empty: None, NaN, "" or b"" (JSON has no null in a binary column: send "")."""
    return not value if isinstance(value, (str, bytes)) else bool(pd.isna(value))


def describe(settings: inpaint.Settings) -> str:
    values = {k: v for k, v in asdict(settings).items() if k != "chosen_by"}
    return f"{settings.chosen_by}: " + " ".join(f"{k}={v}" for k, v in values.items())


def with_params(settings: inpaint.Settings, params: dict | None) -> inpaint.Settings:
    """`settings` with the request's params (schedule, T, sweet_spot, seed) in place of the recommended ones."""
    given = {k: v for k, v in (params or {}).items() if k in PARAM_NAMES and not _absent(v)}
    if not given:
        return settings
    if "schedule" in given and given["schedule"] not in schedules.SCHEDULES:
        raise inpaint.InpaintError(f"params.schedule {given['schedule']!r}: choose one of {', '.join(sorted(schedules.SCHEDULES))}")
    T = int(given.get("T", settings.T))
    k = int(given.get("sweet_spot", T if "T" in given else settings.sweet_spot))
    if T <= settings.start_step:
        raise inpaint.InpaintError(f"params.T {T}: give T > {settings.start_step} (the grid's eval.start_step)")
    if not settings.start_step < k <= T:
        raise inpaint.InpaintError(f"params.sweet_spot {k}: give {settings.start_step + 1} <= sweet_spot <= T = {T}")
    chosen = ", ".join(f"{name}={value}" for name, value in sorted(given.items()))
    return replace(settings, schedule=given.get("schedule", settings.schedule), T=T, sweet_spot=k,
                   seed=int(given.get("seed", settings.seed)), chosen_by=f"{settings.chosen_by}; the request set {chosen}")


class InpaintModel(mlflow.pyfunc.PythonModel):
    """The pyfunc model: a table of pictures and holes -> a table of completed PNGs (module docstring)."""

    def load_context(self, context) -> None:
        self.package = package_from(Path(context.artifacts["vqgan"]), Path(context.artifacts["transformer"]),
                                    Path(context.artifacts["package"]))
        self.inpainter = self.package.inpainter()

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        rows = self._rows(model_input)
        answers = []
        for i, row in enumerate(rows):
            try:
                answers.append(self._complete(row, params))
            except inpaint.InpaintError as err:  # an MlflowException: the scoring server answers 400 with this line
                raise MlflowException.invalid_parameter_value(f"row {i}: {err}" if len(rows) > 1 else str(err)) from err
        return pd.DataFrame(answers, columns=SIGNATURE.outputs.input_names())

    @staticmethod
    def _rows(model_input) -> list[dict]:
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        return [{c: row.get(c) for c in SIGNATURE.inputs.input_names()} for row in frame.to_dict("records")]

    def _complete(self, row: dict, params: dict | None) -> dict:
        if _absent(row["image"]):
            raise inpaint.InpaintError("image is empty; give the bytes of a PNG, JPEG, WebP, BMP, TIFF or GIF file")
        image = inpaint.open_image(bytes(row["image"]), "image")
        given, kind = self._hole_kind(row)
        settings = with_params(self.package.settings(kind), params)
        if given == "mask":
            hole = inpaint.hole_from_mask(inpaint.open_image(bytes(row["mask"]), "mask"), image.size, "mask")
        elif given == "box":
            hole = inpaint.hole_from_box(str(row["box"]), image.size)
        else:
            hole = inpaint.hole_of_kind(kind, image.size, resolution=self.inpainter.resolution, f=self.inpainter.vqgan.config.downsample,
                                        seed=settings.seed, token_ratio=self.package.eval.random_token_ratio)
        done = self.inpainter.complete(image, hole, settings)
        png = io.BytesIO()
        done.image.save(png, format="PNG")
        return {"image": png.getvalue(), "settings": describe(settings), "notes": "; ".join([*done.notes, self.package.training_note])}

    @staticmethod
    def _hole_kind(row: dict) -> tuple[str, str]:
        """Which column gives the row's hole (mask, box or kind), and the mask kind whose grid pick stands for it."""
        given = [c for c in ("mask", "box", "kind") if not _absent(row[c])]
        if len(given) > 1:
            raise inpaint.InpaintError(f"give one of mask, box and kind per picture, not {' and '.join(given)}")
        if given == ["mask"]:
            return "mask", inpaint.DRAWN_KIND
        if given == ["box"]:
            return "box", inpaint.BOX_KIND
        kind = row["kind"] if given else DEFAULT_KIND
        if kind not in masks.KINDS:
            raise inpaint.InpaintError(f"kind {kind!r}: choose one of {', '.join(masks.KINDS)}")
        return "kind", kind


def requirements() -> list[str]:
    """This project's dependencies, each pinned at the version installed here: the environment the model was checked in."""
    try:
        needs = importlib.metadata.requires(PROJECT) or []
    except importlib.metadata.PackageNotFoundError as err:
        raise inpaint.InpaintError(f"{PROJECT} is not installed here; `pip install -e .` in the repository "
                                   "(its pins are the model's requirements)") from err
    names = [re.match(r"[A-Za-z0-9._-]+", need).group() for need in needs if ";" not in need]  # with a marker: an extra (test)
    return [f"{name}=={importlib.metadata.version(name)}" for name in names]


def package_json(package: inpaint.Package, trained_on: TrainedOn) -> str:
    return json.dumps({"format": PACKAGE_FORMAT, "eval": package.eval.model_dump(mode="json"), "summary": package.summary,
                       "training_note": package.training_note, "trained_on": asdict(trained_on)}, indent=2, sort_keys=True) + "\n"


def content_digest(package: inpaint.Package, trained_on: TrainedOn) -> str:
    """sha256 over the model's artifacts: the files of both model directories and package.json."""
    digest = hashlib.sha256(package_json(package, trained_on).encode())
    for name, directory in (("vqgan", package.vqgan_dir), ("transformer", package.transformer_dir)):
        for path in sorted(p for p in Path(directory).rglob("*") if p.is_file()):
            digest.update(f"{name}/{path.relative_to(directory).as_posix()}\0".encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def example_request(resolution: int) -> pd.DataFrame:
    """One picture at the model's resolution (a colour ramp) with a box over its centre: the model's input example."""
    ramp = np.linspace(0, 255, resolution, dtype=np.uint8)
    pixels = np.stack(np.broadcast_arrays(ramp[None, :], ramp[:, None], np.uint8(128)), axis=-1)  # (R, R, 3)
    png = io.BytesIO()
    Image.fromarray(pixels).save(png, format="PNG")
    side = resolution // 2
    return pd.DataFrame({"image": [png.getvalue()], "box": [f"{side // 2},{side // 2},{side},{side}"]})


class _NotOurPickle(logging.Filter):
    """Drops MLflow's warning that a pickled python_model may run arbitrary code: ours pickles a bare reference to InpaintModel."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Passing a Python object as `python_model`")


@contextlib.contextmanager
def _model_arguments(package: inpaint.Package, trained_on: TrainedOn) -> Iterator[dict]:
    """What save_model and log_model get alike: the artifacts, the signature, an input example, the pins."""
    quiet, logger = _NotOurPickle(), logging.getLogger("mlflow.pyfunc")
    with tempfile.TemporaryDirectory() as staging:
        (Path(staging) / PACKAGE_FILE).write_text(package_json(package, trained_on))
        resolution = json.loads((Path(package.vqgan_dir) / CONFIG).read_text())["model"]["resolution"]
        logger.addFilter(quiet)
        try:
            yield {"python_model": InpaintModel(), "signature": SIGNATURE, "pip_requirements": requirements(),
                   "input_example": example_request(resolution),
                   "artifacts": {"vqgan": str(package.vqgan_dir), "transformer": str(package.transformer_dir),
                                 "package": str(Path(staging) / PACKAGE_FILE)}}
        finally:
            logger.removeFilter(quiet)


def save(path: Path | str, package: inpaint.Package, trained_on: TrainedOn) -> Path:
    """Write the pair as one pyfunc model directory at `path` (absent or empty)."""
    with _model_arguments(package, trained_on) as arguments:
        mlflow.pyfunc.save_model(str(path), **arguments)
    return Path(path)


def check(path: Path | str) -> None:
    """Load a saved model as `mlflow models serve` does and complete its input example; InpaintError when it does not."""
    model = mlflow.pyfunc.load_model(str(path))
    example = Model.load(str(path)).load_input_example(str(path))
    answer = model.predict(example)
    got = Image.open(io.BytesIO(answer["image"][0])).size
    wanted = Image.open(io.BytesIO(example["image"][0])).size
    if got != wanted:
        raise inpaint.InpaintError(f"{path}: the model answered its input example with a {got} picture, not {wanted}")


def log(package: inpaint.Package, trained_on: TrainedOn, *, registered_name: str) -> Registered:
    """Log the pair as a pyfunc model in a run of experiment EXPERIMENT and register it under `registered_name`.

    A version whose artifacts have the same content digest is kept instead: retraining
    to the same weights (with the same grid picks) adds no run and no version.
    """
    uri = tracking.tracking_uri()
    client = MlflowClient(uri, registry_uri=uri)
    digest = content_digest(package, trained_on)
    if same := client.search_model_versions(f"name = '{registered_name}' and tags.{DIGEST_TAG} = '{digest}'"):
        version = max(int(v.version) for v in same)
        return Registered(registered_name, version, f"models:/{registered_name}/{version}", False, uri)
    with tracking.run(EXPERIMENT, run_name="register_model", profile=trained_on.profile,
                      params={"registered_name": registered_name, "data.source": trained_on.source},
                      tags={DIGEST_TAG: digest, "vqgan": Path(package.vqgan_dir).as_posix(),
                            "transformer": Path(package.transformer_dir).as_posix()}):
        with _model_arguments(package, trained_on) as arguments:
            info = mlflow.pyfunc.log_model(name="model", **arguments)
    try:
        client.create_registered_model(registered_name)
    except MlflowException as err:
        if err.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    created = client.create_model_version(registered_name, source=info.model_uri, run_id=info.run_id, model_id=info.model_id,
                                          tags={DIGEST_TAG: digest, "profile": trained_on.profile})
    version = int(created.version)
    return Registered(registered_name, version, f"models:/{registered_name}/{version}", True, uri)


def package_from(vqgan_dir: Path, transformer_dir: Path, package_file: Path) -> inpaint.Package:
    """The Package a saved model's artifacts describe."""
    info = json.loads(package_file.read_text())
    if info.get("format") != PACKAGE_FORMAT:
        raise inpaint.InpaintError(f"{package_file}: format {info.get('format')} of another version of {PROJECT} "
                                   f"(this one reads {PACKAGE_FORMAT}); save the model again: `dvc repro register_model`")
    try:
        eval_params = config.EvalParams.model_validate(info["eval"])
    except ValueError as err:
        raise inpaint.InpaintError(f"{package_file}: its eval params do not load here ({err.__class__.__name__}); "
                                   "save the model again: `dvc repro register_model`") from err
    return inpaint.Package(vqgan_dir, transformer_dir, eval_params, info["summary"], info["training_note"])


def load_package(uri: str) -> inpaint.Package:
    """The Package of an MLflow model: models:/maskgit-inpaint/latest, runs:/<id>/model, models:/<model id>, or a saved directory.

    A local store's model is read where it lies; a remote one is downloaded to a temp dir, as mlflow.pyfunc.load_model does.
    """
    try:
        if Path(uri).is_dir():
            local = Path(uri)
        else:
            mlflow.set_tracking_uri(tracking.tracking_uri())
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri))
        artifacts = Model.load(str(local)).flavors["python_function"]["artifacts"]
    except (MlflowException, OSError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise inpaint.InpaintError(f"{uri}: cannot load this MLflow model ({reason}); give models:/<registry.name>/latest "
                                   f"(MLFLOW_TRACKING_URI: the store register_model used, now {tracking.tracking_uri()}) "
                                   "or the directory register_model wrote (models/mlflow)") from err
    except KeyError as err:
        raise inpaint.InpaintError(f"{uri}: an MLflow model, but not one of {PROJECT} (no pyfunc artifacts); "
                                   "give the one register_model saved (models/mlflow)") from err
    paths = {name: local / spec["path"] for name, spec in artifacts.items()}
    if set(paths) != {"vqgan", "transformer", "package"}:
        raise inpaint.InpaintError(f"{uri}: an MLflow model, but not one of {PROJECT} (artifacts {sorted(paths)}); "
                                   "give the one register_model saved (models/mlflow)")
    return package_from(paths["vqgan"], paths["transformer"], paths["package"])
