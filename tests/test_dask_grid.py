"""The grid on real Dask clusters through prefect-dask (eval.runner: dask): the local cluster the runner
starts, and an existing scheduler at eval.dask_address, against the threads runner's table."""
from __future__ import annotations

import socket
import subprocess
import sys

import distributed
import pandas as pd
import pytest
from prefect.settings import PREFECT_RESULTS_LOCAL_STORAGE_PATH, temporary_settings

from conftest import ROOT, stage_env, write_tiny_params
from maskgit_inpaint import config, grid_runner, runtime

pytestmark = pytest.mark.scale_out

WORKERS = 2
GRID = {"masks": ["center"], "T": [1, 3]}  # 3 trajectories (T = 1, then T = 3 under 2 schedules) and 2 baselines


def _table(project) -> pd.DataFrame:
    return pd.read_csv(project / "results/grid.csv")


def _timeless(project) -> pd.DataFrame:
    """The grid table without what is measured, not computed: the seconds per image."""
    return _table(project).drop(columns=["seconds_per_image"])


def test_the_grid_on_dask_gives_the_threads_table_and_shares_its_cache(prefect_server, grid_project, tmp_path, monkeypatch):
    from flows.eval_grid import eval_grid

    # Nested, so cloudpickle sends them by value: a worker need not import this module (and its conftest).
    def count_loads_and_trajectories(dask_worker):
        """On a worker: count its model loads and the trajectories it decodes (run with client.run, before the grid)."""
        from maskgit_inpaint import evaluation
        from maskgit_inpaint.models.vqgan import VQGAN

        dask_worker.model_loads, dask_worker.trajectories = 0, 0
        load, decode = VQGAN.load, evaluation.run_trajectory

        def counted_load(*args, **kwargs):
            dask_worker.model_loads += 1
            return load(*args, **kwargs)

        def counted_decode(*args, **kwargs):
            dask_worker.trajectories += 1
            return decode(*args, **kwargs)

        VQGAN.load, evaluation.run_trajectory = counted_load, counted_decode

    def counts_of(dask_worker):
        import os

        return os.getpid(), dask_worker.model_loads, dask_worker.trajectories

    # SWD sums float32 over thousands of patches, and torch splits such sums by thread: the tiny grid with 1 and
    # with 2 torch threads differed in the swd columns only, by up to 3e-5 (values 58-317). So the threads run gets
    # the torch threads of one local-cluster worker, and the tables must agree exactly. The env also undoes, at
    # teardown, the OMP_NUM_THREADS a nanny writes into this process.
    monkeypatch.setenv("OMP_NUM_THREADS", str(max(1, runtime.cores() // WORKERS)))
    params = grid_project / "params.yaml"
    write_tiny_params(params, eval={**GRID, "runner": "threads"})
    with temporary_settings({PREFECT_RESULTS_LOCAL_STORAGE_PATH: tmp_path / "cache-1"}):  # no cells from other tests
        eval_grid(params_file="params.yaml")
        threads = _table(grid_project)

        # The same grid on a local cluster the runner starts (one worker: it only reads the cache): every cell from
        # the threads run's cache. A decoded cell would have a new measured time; the table, seconds_per_image
        # included, is the same to the bit.
        write_tiny_params(params, eval={**GRID, "runner": "dask", "dask_address": "", "dask_workers": 1})
        eval_grid(params_file="params.yaml")
        pd.testing.assert_frame_equal(_table(grid_project), threads, check_exact=True)

    # A scheduler started here, with workers made as the runner makes a local cluster's, and a cache of its own: every
    # cell is decoded on those workers.
    with distributed.LocalCluster(**grid_runner.local_cluster(WORKERS), dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client, \
            temporary_settings({PREFECT_RESULTS_LOCAL_STORAGE_PATH: tmp_path / "cache-2"}):
        client.run(count_loads_and_trajectories)
        write_tiny_params(params, eval={**GRID, "runner": "dask", "dask_address": cluster.scheduler_address})
        eval_grid(params_file="params.yaml")
        counts = list(client.run(counts_of).values())
    pd.testing.assert_frame_equal(_timeless(grid_project), threads.drop(columns=["seconds_per_image"]), check_exact=True)
    assert sum(trajectories for _, _, trajectories in counts) == 3
    decoded_on = {pid for pid, _, trajectories in counts if trajectories}
    assert len(decoded_on) == WORKERS, f"trajectories ran on one worker only: {counts}"
    # Each worker process loaded the models once, however many trajectories and baselines it ran.
    assert [loads for _, loads, _ in counts] == [1] * WORKERS, counts


def test_a_scheduler_that_is_not_there_is_one_line_naming_it(tiny_project):
    with socket.socket() as free:  # a port nobody listens on
        free.bind(("127.0.0.1", 0))
        address = f"tcp://127.0.0.1:{free.getsockname()[1]}"
    write_tiny_params(tiny_project / "params.yaml", eval={"runner": "dask", "dask_address": address})
    done = subprocess.run([sys.executable, "-m", "stages.eval_grid"], cwd=tiny_project, env=stage_env(), capture_output=True, text=True)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    line, = done.stderr.strip().splitlines()
    assert line.startswith(f"eval.dask_address {address}: no Dask scheduler answered") and "dask scheduler" in line, line


def test_a_scheduler_without_workers_is_named_before_the_grid_waits_on_it():
    with distributed.LocalCluster(n_workers=0, processes=False, dashboard_address=None) as cluster:
        params = config.EvalParams.model_validate({**config.load(ROOT / "params.yaml").eval.model_dump(), "runner": "dask",
                                                   "dask_address": cluster.scheduler_address})
        with pytest.raises(grid_runner.ClusterUnavailable) as raised:
            grid_runner.check(params)
    assert str(raised.value).startswith(f"eval.dask_address {cluster.scheduler_address}: the scheduler has no workers; start them")
