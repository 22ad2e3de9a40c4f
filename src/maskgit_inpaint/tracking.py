"""MLflow conventions: where runs go, experiment names, parent/child runs, tables.

Default store: `sqlite:///mlflow.db` in the working directory (the repo root under
DVC), artifacts beside it in `mlartifacts/`. `MLFLOW_TRACKING_URI` overrides; for a
tracking server (`http://...`), `require_reachable()` is the check a stage makes before
it loads anything, so a server that is down costs one line, not a run.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import mlflow  # telemetry is off before this import: maskgit_inpaint/__init__.py applies environment.py
from mlflow.entities import Metric, Param
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.credentials import get_default_host_creds
from mlflow.utils.rest_utils import http_request

from maskgit_inpaint import runtime

logging.getLogger("mlflow").setLevel(logging.WARNING)  # no table-creation chatter in stage output

DEFAULT_URI = "sqlite:///mlflow.db"
ARTIFACTS = "mlartifacts"
# An experiment's kind as MLflow records it (the UI's kind selector writes this tag): its "Machine learning"
# kind, not GenAI. MLflow 3.17's UI picks its views from its sidebar switch instead (see runs_table_url).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING = "custom_model_development"
# + a key: a runs-table view (columns, order, filter) the UI opens from `?viewStateShareKey=<key>`;
# its Share button stores views the same way.
SHARED_VIEW_TAG = "mlflow.sharedViewState."
UI_OF_LOCAL_STORES = "http://127.0.0.1:5000"  # where `make ui` serves mlflow.db
PROBE_ENDPOINT = "/api/2.0/mlflow/experiments/search"  # any MLflow server answers it with a JSON object
PROBE_TIMEOUT_S = 3
FIX = ('start it as in README "MLflow on a tracking server", '
       "or unset MLFLOW_TRACKING_URI to log to the local sqlite store (mlflow.db)")


class TrackingServerUnreachable(RuntimeError):
    """MLFLOW_TRACKING_URI names a server that is down, too slow or not MLflow; the message is one line with the fix."""


def tracking_uri() -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_URI)
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = "sqlite:///" + str(Path(uri[len("sqlite:///"):]).resolve())  # pin the store to one file
    return uri


def _artifact_location(uri: str, experiment: str) -> str | None:
    # An experiment's artifact root is fixed at creation; anchor it next to a local
    # store instead of whatever the cwd was at that moment (STACK.md). A server (or any
    # other store) chooses its own: `mlflow server --artifacts-destination` gives
    # `mlflow-artifacts:/<id>`, uploaded through the server, so clients never need the storage.
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///"):]).parent / ARTIFACTS / experiment).as_uri()
    return None


def _probe_failure(uri: str, timeout_s: float) -> str | None:
    """Why the server at `uri` cannot take runs, or None when it answers as MLflow does."""
    try:
        # No retries: MLflow's client retries 7 times with backoff by default (minutes against a dead port).
        response = http_request(get_default_host_creds(uri), PROBE_ENDPOINT, "GET", max_retries=0, backoff_factor=0,
                                timeout=timeout_s, params={"max_results": 1})
    except MlflowException as error:
        root = error
        while root.__cause__ or root.__context__:
            root = root.__cause__ or root.__context__
        if "timed out" in str(error).lower():
            return f"did not answer within {timeout_s:g} s"
        if isinstance(root, ConnectionRefusedError):
            return "refused the connection (nothing listens there)"
        return f"could not be reached ({root})"
    if response.status_code != 200:
        return f"answered HTTP {response.status_code} {response.reason} to the MLflow API"
    try:
        body = response.json()
    except ValueError:
        body = None
    return None if isinstance(body, dict) else "answered, but not as an MLflow tracking server"


def require_reachable(uri: str | None = None, *, timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """Raise TrackingServerUnreachable unless the tracking server takes requests; a no-op for database and file stores.

    One request, no retries, `timeout_s` at most: what a stage calls before it loads data or models.
    """
    uri = uri or tracking_uri()
    if not uri.startswith(("http://", "https://")):
        return  # a local store is opened (and, if need be, created) by the run itself
    reason = _probe_failure(uri, timeout_s)
    if reason is not None:
        raise TrackingServerUnreachable(f"MLflow tracking server {uri} (MLFLOW_TRACKING_URI) {reason}: {FIX}")


def experiment_id(name: str) -> str:
    """The experiment's id, created if need be; either way tagged as a model-training experiment for the UI."""
    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    found = mlflow.get_experiment_by_name(name)
    if found is None:
        return mlflow.create_experiment(name, artifact_location=_artifact_location(uri, name),
                                        tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING})
    if found.tags.get(EXPERIMENT_KIND_TAG) != MODEL_TRAINING:  # created before the tag, or by hand
        MlflowClient(uri).set_experiment_tag(found.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING)
    return found.experiment_id


@dataclass(frozen=True)
class RunsView:
    """A view of an experiment's runs table in MLflow's UI: which columns it shows, in which order, which runs."""
    key: str  # the name in the view's URL
    params: tuple[str, ...] = ()
    metrics: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    order_by_metric: str | None = None  # ascending
    search_filter: str = ""  # MLflow's search syntax, as in search_runs(filter_string=...)


def runs_table_url(experiment: str, view: str | None = None) -> str:
    """The UI's runs table of an experiment id (opened as a model-training experiment, not GenAI), in `view` if given."""
    uri = tracking_uri()
    base = uri.rstrip("/") if uri.startswith(("http://", "https://")) else UI_OF_LOCAL_STORES
    shared = f"&viewStateShareKey={view}" if view else ""
    # MLflow 3.17's UI opens every experiment in its GenAI views unless the URL (or the browser's last choice) says otherwise.
    return f"{base}/#/experiments/{experiment}/runs?workflowType=machine_learning{shared}"


def share_runs_view(experiment: str, view: RunsView) -> str:
    """Store `view` on the experiment id (in the tag the UI's shared views use); returns the URL that opens it."""
    columns = [f"{kind}.`{name}`" for kind, names in (("params", view.params), ("metrics", view.metrics), ("tags", view.tags))
               for name in names]
    state = {"selectedColumns": columns, "searchFilter": view.search_filter}
    if view.order_by_metric:
        state.update(orderByKey=f"metrics.`{view.order_by_metric}`", orderByAsc=True)
    MlflowClient(tracking_uri()).set_experiment_tag(experiment, SHARED_VIEW_TAG + view.key, json.dumps(state))
    return runs_table_url(experiment, view.key)


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
