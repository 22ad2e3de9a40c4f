"""Test isolation: every store (MLflow, Prefect, torch hub) lives in temp dirs, never in $HOME."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
TINY_OVERRIDES = Path(__file__).with_name("tiny_params.yaml")

# Before any import of prefect / mlflow / torch hub: they read these at import time. Only what isolates
# the tests is set here; the project's own defaults come from maskgit_inpaint.environment.
_session_home = Path(tempfile.mkdtemp(prefix="maskgit-tests-"))
os.environ["PREFECT_HOME"] = str(_session_home / "prefect")
os.environ["PREFECT_LOGGING_LEVEL"] = "WARNING"
os.environ["TORCH_HOME"] = str(_session_home / "torch")
os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(_session_home / "inductor")
os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{_session_home / 'mlflow.db'}"

import maskgit_inpaint  # noqa: E402,F401  (applies the environment defaults)


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_session_home, ignore_errors=True)


def write_tiny_params(dest: Path, **section_updates: dict) -> Path:
    """The repo's params.yaml with the tiny overrides (and `section_updates`) merged in, written to `dest` (profiles/ beside it)."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    overrides = yaml.safe_load(TINY_OVERRIDES.read_text())
    for updates in (overrides, section_updates):
        for section, values in updates.items():
            params[section].update(values)
    dest.write_text(yaml.safe_dump(params, sort_keys=False))
    shutil.copytree(ROOT / "profiles", dest.parent / "profiles", dirs_exist_ok=True)  # the overlays config.load applies
    return dest


@pytest.fixture
def tiny_project(tmp_path, monkeypatch) -> Path:
    """A temp working dir with the tiny params file and its own MLflow store."""
    write_tiny_params(tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    return tmp_path


def stage_env(env: dict | None = None) -> dict:
    """The environment a stage subprocess gets: ours, the repo on the path, and `env`."""
    return {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}


def run_stage(name: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `python -m stages.<name>` as DVC would, from `cwd`."""
    return subprocess.run([sys.executable, "-m", f"stages.{name}"], cwd=cwd, env=stage_env(env), capture_output=True, text=True)


def kill_stage_at_first_checkpoint(name: str, cwd: Path, env: dict, state: Path) -> None:
    """Start `python -m stages.<name>` and SIGKILL it as soon as the file `state` appears (a checkpoint, a shard)."""
    proc = subprocess.Popen([sys.executable, "-m", f"stages.{name}"], cwd=cwd, env=stage_env(env),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not state.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def free_port() -> int:
    """A loopback port nobody listens on right now (for a server a test starts, or one that is down)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process_group(proc: subprocess.Popen, timeout: float) -> None:
    """SIGTERM the group a server was started in (start_new_session=True), SIGKILL it after `timeout` s."""
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def dvc_env(cwd: Path, env: dict | None = None) -> dict:
    """What `dvc` and its stages run with: this venv first on PATH, the repo's own MLflow store, and `env`."""
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            "MLFLOW_TRACKING_URI": f"sqlite:///{cwd / 'mlflow.db'}", **(env or {})}


def run_ok(args: list[str], cwd: Path, env: dict | None = None) -> str:
    """Run a command as a user would from `cwd` (dvc_env); fail the test with its output unless it succeeds."""
    done = subprocess.run(args, cwd=cwd, env=dvc_env(cwd, env), capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def commit_all(repo: Path, message: str) -> None:
    run_ok(["git", "add", "-A"], repo)
    run_ok(["git", "commit", "-q", "-m", message], repo)


def project_repo(path: Path, write_params: Callable[[Path], object]) -> Path:
    """A git + DVC repo with this project's code, dvc.yaml and profiles; `write_params(path / "params.yaml")` writes its params."""
    path.mkdir()
    for name in ("src", "stages", "flows", "profiles"):
        shutil.copytree(ROOT / name, path / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("dvc.yaml", ".dvcignore", ".gitignore", "README.md", "pretrained/README.md"):
        (path / name).parent.mkdir(exist_ok=True)
        shutil.copy(ROOT / name, path / name)
    write_params(path / "params.yaml")
    run_ok(["git", "init", "-q"], path)
    run_ok(["git", "config", "user.name", "test"], path)  # `dvc exp run` commits
    run_ok(["git", "config", "user.email", "test@example.com"], path)
    run_ok(["dvc", "init", "-q"], path)
    commit_all(path, "project")
    return path


@pytest.fixture(scope="session")
def tiny_chain(tmp_path_factory) -> Path:
    """The chain up to a trained transformer on the tiny profile, built once per session."""
    root = tmp_path_factory.mktemp("chain")
    write_tiny_params(root / "params.yaml")
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}"}
    for stage in ("sample", "shard", "finetune_vqgan", "extract_tokens", "train_transformer", "eval_masks"):
        done = run_stage(stage, root, env)
        assert done.returncode == 0, f"{stage} failed:\n{done.stderr[-3000:]}"
    return root


@pytest.fixture(scope="module")
def prefect_server():
    """A Prefect server for the module's flow runs (its own database; results go to PREFECT_HOME's storage)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def grid_project(tiny_chain, tmp_path, monkeypatch):
    """A copy of the tiny chain to run the grid in, with its own MLflow store; the working dir."""
    from maskgit_inpaint import evaluation

    project = tmp_path / "project"
    shutil.copytree(tiny_chain, project, ignore=shutil.ignore_patterns("mlflow.db", "mlartifacts"))
    monkeypatch.chdir(project)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{project / 'mlflow.db'}")
    evaluation._loaded.clear()  # backbones are resolved when a spec is first loaded
    return project


def remake_masks(project):
    """After an edit of eval's seed or masks: the eval_masks stage, as `dvc repro` runs it before the grid."""
    done = run_stage("eval_masks", project)
    assert done.returncode == 0, done.stderr[-2000:]
