"""The served deployment end to end: a real Prefect server, `python -m flows.serve`, and
`prefect deployment run 'eval-grid/default' --watch`, all in throwaway dirs and on a free port.

Stop order matters (STACK.md): the serve process first, then the server; with the server
gone first, serve hangs on shutdown.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import ExitStack
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from conftest import free_port, stage_env

BIN = Path(sys.executable).parent
DEPLOYMENT = "eval-grid/default"
SERVER_START_TIMEOUT = 120  # ~11 s on a new DB here; generous for a loaded 2-core machine
SERVE_START_TIMEOUT = 120  # imports torch and the flow, then registers the deployment
RUN_TIMEOUT = 480  # the flow run itself: subprocess start, imports, the tiny grid



def _tail(log: Path, chars: int = 3000) -> str:
    try:
        return log.read_text(errors="replace")[-chars:]
    except OSError:
        return "<no log>"


def _get(url: str):
    """JSON body of a GET, or None on a connection error or an HTTP error status."""
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return json.loads(resp.read() or b"null")
    except (urllib.error.URLError, ConnectionError, TimeoutError, json.JSONDecodeError):
        return None


class _Background:
    """A subprocess in its own session, output to a log file; stop() ends its whole group."""

    def __init__(self, name: str, args: list[str], cwd: Path, env: dict, logs: Path):
        self.name, self.log = name, logs / f"{name}.log"
        self._fh = open(self.log, "wb")
        try:
            self.proc = subprocess.Popen(args, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=self._fh,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        except BaseException:
            self._fh.close()
            raise

    def describe(self) -> str:
        return f"--- {self.name} (exit code {self.proc.poll()}) log tail ---\n{_tail(self.log)}"

    def wait_for(self, ready, what: str, timeout: float, context=lambda: "") -> object:
        """Poll `ready()` until it returns something truthy; fail with the log tail on timeout or exit."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if (found := ready()):
                return found
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited before {what}\n{self.describe()}{context()}")
            time.sleep(0.5)
        raise AssertionError(f"{what}: not within {timeout} s\n{self.describe()}{context()}")

    def stop(self, grace: float = 30) -> None:
        try:
            if self.proc.poll() is None:
                try:
                    os.killpg(self.proc.pid, signal.SIGTERM)  # SIGINT is ignored by a background process
                    self.proc.wait(grace)
                except subprocess.TimeoutExpired:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                    self.proc.wait(30)
                except ProcessLookupError:
                    pass
            # The group may outlive its leader (uvicorn, a flow-run subprocess): leave nothing behind.
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        finally:
            self._fh.close()


@pytest.mark.scale_out  # a real Prefect server and a serve process: make test-scale, with the other servers
def test_deployment_run_against_a_local_server(tiny_chain, tmp_path):
    project = tmp_path / "project"
    shutil.copytree(tiny_chain, project, ignore=shutil.ignore_patterns("mlflow.db", "mlartifacts"))
    assert not (project / "results/grid.csv").exists()
    logs = tmp_path / "logs"
    logs.mkdir()
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    tracking = f"sqlite:///{project / 'mlflow.db'}"
    env = stage_env({
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_UI_ENABLED": "false",
        "PREFECT_API_URL": api,
        "PREFECT_LOGGING_LEVEL": "INFO",  # the serve log is the first place to look when the run fails
        "PREFECT_RUNNER_POLL_FREQUENCY": "2",  # default 10 s between the runner's looks for new runs
        "MLFLOW_TRACKING_URI": tracking,
    })
    server_env = {k: v for k, v in env.items() if k != "PREFECT_API_URL"}

    with ExitStack() as stack:  # unwinds in reverse: serve is stopped before the server
        server = _Background("server", [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1",
                                        "--port", str(port)], tmp_path, server_env, logs)
        stack.callback(server.stop)
        server.wait_for(lambda: _get(f"{api}/health") is True, "server healthy", SERVER_START_TIMEOUT)

        serve = _Background("serve", [sys.executable, "-m", "flows.serve"], project, env, logs)
        stack.callback(serve.stop)
        both = lambda: f"\n{server.describe()}"  # noqa: E731
        deployment = serve.wait_for(lambda: _get(f"{api}/deployments/name/{DEPLOYMENT}"),
                                    f"deployment {DEPLOYMENT} registered", SERVE_START_TIMEOUT, both)
        assert deployment.get("name") == "default"

        try:
            done = subprocess.run(
                [str(BIN / "prefect"), "deployment", "run", DEPLOYMENT, "--param", "T=[2]",
                 "--watch", "--watch-timeout", str(RUN_TIMEOUT)],
                cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                timeout=RUN_TIMEOUT + 60)
        except subprocess.TimeoutExpired as exc:
            raise AssertionError(f"`prefect deployment run` hung\n{serve.describe()}{both()}") from exc
        out = done.stdout + done.stderr
        report = f"\n--- deployment run (exit code {done.returncode}) ---\n{out[-3000:]}\n{serve.describe()}"
        assert done.returncode == 0, report

        match = re.search(r"UUID: ([0-9a-f-]{36})", out)
        assert match, report
        flow_run = _get(f"{api}/flow_runs/{match.group(1)}")
        assert flow_run is not None, report
        assert flow_run["state"]["type"] == "COMPLETED", report
        assert flow_run["deployment_id"] == deployment["id"]
        assert flow_run["parameters"] == {"T": [2]}

    grid = pd.read_csv(project / "results/grid.csv")
    decoded = grid[grid.method == "maskgit"]
    assert len(decoded) > 0 and set(decoded["T"]) == {2}, report
    assert (grid.status == "ok").all(), report

    client = MlflowClient(tracking_uri=tracking)
    experiment = client.get_experiment_by_name("eval-grid")
    assert experiment is not None, report
    parents = client.search_runs([experiment.experiment_id], filter_string="tags.fingerprint != ''")
    assert len(parents) == 1, report
    assert parents[0].info.status == "FINISHED"
