"""Environment defaults of the tools the chain drives (Prefect, MLflow, DVC), in one table.

Applied when the package is imported (maskgit_inpaint/__init__.py), which every
stage, flow and test does before it imports Prefect or MLflow: both read these at
import time. A variable already set in the environment wins, so a shell, a CI job
or a test can point any of them elsewhere.

    python -m maskgit_inpaint              # print the defaults in effect (__main__.py)
    python -m maskgit_inpaint CMD ARGS...  # run CMD with them (the Makefile's `ui`)

DVC's own analytics are off in .dvc/config (`core.analytics = false`), which the
`dvc` command reads wherever it is started.
"""
from __future__ import annotations

import os
from pathlib import Path


def defaults() -> dict[str, str]:
    """Variable -> default value; paths are anchored at the working directory (the repo root under DVC and make)."""
    return {
        "PREFECT_HOME": str(Path.cwd() / ".prefect"),  # the flow's local database and results stay in the repo, not in $HOME
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",  # no telemetry from the ephemeral server the flow starts
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",  # default 20 s: too short for a first start on a loaded 2-core laptop
        "MLFLOW_DISABLE_TELEMETRY": "true",  # MLflow reports usage unless told not to
        # Against a tracking server MLflow prints two links per run ended: 2 x 430 lines for a grid (which prints its own link).
        "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",  # `make ui`: the job runner needs an extra service we do not use
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",  # no progress bars in stage output when a model's files are copied
        "DVC_NO_ANALYTICS": "1",  # dvc started from Python (tests, flows) also skips analytics when .dvc/config is absent
    }


def apply() -> None:
    for name, value in defaults().items():
        os.environ.setdefault(name, value)

