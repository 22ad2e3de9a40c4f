"""MLflow conventions: where runs go, experiment names, parent/child runs, tables.

Default store: `sqlite:///mlflow.db` in the working directory (the repo root under
DVC), artifacts beside it in `mlartifacts/`. `MLFLOW_TRACKING_URI` overrides.
"""
from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import mlflow  # telemetry is off before this import: maskgit_inpaint/__init__.py applies environment.py
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from maskgit_inpaint import runtime

logging.getLogger("mlflow").setLevel(logging.WARNING)  # no table-creation chatter in stage output

DEFAULT_URI = "sqlite:///mlflow.db"
ARTIFACTS = "mlartifacts"


def tracking_uri() -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_URI)
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = "sqlite:///" + str(Path(uri[len("sqlite:///"):]).resolve())  # pin the store to one file
    return uri


def _artifact_location(uri: str, experiment: str) -> str | None:
    # An experiment's artifact root is fixed at creation; anchor it next to a local
    # store instead of whatever the cwd was at that moment (STACK.md).
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///"):]).parent / ARTIFACTS / experiment).as_uri()
    return None


def experiment_id(name: str) -> str:
    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    found = mlflow.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    return mlflow.create_experiment(name, artifact_location=_artifact_location(uri, name))


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True).stdout
        return out.stdout.strip() + ("-dirty" if dirty.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _flat(params: dict, prefix: str = "") -> dict[str, str]:
    flat = {}
    for key, value in params.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = str(value)[:6000]
    return flat


@contextlib.contextmanager
def run(experiment: str, run_name: str, params: dict, tags: dict | None = None, *, profile: str) -> Iterator[mlflow.ActiveRun]:
    """An MLflow run with params (flattened), the profile (param and tag: the runs table can filter and group by it), the git commit and extra tags."""
    eid = experiment_id(experiment)
    with mlflow.start_run(experiment_id=eid, run_name=run_name) as active:
        mlflow.set_tags({"git_commit": git_commit(), "profile": profile, **(tags or {})})
        mlflow.log_params({"profile": profile, **_flat(params)})
        yield active


def runtime_params(prec: runtime.Precision) -> dict[str, str]:
    """The precision and hardware a run's figures came from, as MLflow params (runtime.precision, runtime.device, ...)."""
    return {f"runtime.{k}": str(v) for k, v in prec.facts().items()}


def log_child_runs(parent: mlflow.ActiveRun, rows: list[dict], name_keys: list[str], metric_keys: list[str],
                   tags: list[dict[str, str]] | None = None) -> list[str]:
    """One nested child run per row (a grid cell): name keys as params, metric keys as metrics, optional tags per row."""
    client = MlflowClient(tracking_uri())
    eid = parent.info.experiment_id
    ids = []
    now = int(time.time() * 1000)
    for i, row in enumerate(rows):
        name = "/".join(f"{k}={row[k]}" for k in name_keys)
        child = client.create_run(eid, run_name=name, tags={"mlflow.parentRunId": parent.info.run_id, **(tags[i] if tags else {})})
        metrics = [Metric(k, float(row[k]), now, 0) for k in metric_keys if row.get(k) is not None]
        client.log_batch(child.info.run_id, metrics=metrics, params=[Param(k, str(row[k])) for k in name_keys])
        client.set_terminated(child.info.run_id)
        ids.append(child.info.run_id)
    return ids
