"""Where the grid's tasks run (params `eval.runner`): in the flow's process, or on a Dask cluster through prefect-dask.

- threads: one task at a time in the flow's process; each trajectory already uses every
  core (or the GPU), and timings stay clean.
- dask, `eval.dask_address` empty: a `distributed.LocalCluster` of `eval.dask_workers`
  processes, one task at a time each, sharing this machine's cores.
- dask with an address: the workers of that running scheduler, started from this
  checkout at the same path and sharing the flow's Prefect result storage (README).

Every worker process loads the models once per grid: evaluation.load_data caches them
per process and GridSpec. The runner is not part of the GridSpec, so a cell cached by
one runner is a cache hit for the other.
"""
from __future__ import annotations

from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from maskgit_inpaint import runtime
from maskgit_inpaint.config import EvalParams

CONNECT_TIMEOUT = "5s"  # for the scheduler at eval.dask_address to answer, then for a worker of it to be there


class ClusterUnavailable(RuntimeError):
    """eval.dask_address names no scheduler that answers, or one without workers."""


def task_runner(p: EvalParams) -> TaskRunner:
    """The Prefect task runner params' `eval.runner` names (the flow takes it through `with_options`)."""
    if p.runner == "threads":
        return ThreadPoolTaskRunner(max_workers=1)
    from prefect_dask import DaskTaskRunner  # lazily: only a Dask grid needs prefect-dask and distributed

    if p.dask_address:
        check(p)
        return DaskTaskRunner(address=p.dask_address)
    return DaskTaskRunner(cluster_class="distributed.LocalCluster", cluster_kwargs=local_cluster(p.dask_workers))


def local_cluster(workers: int) -> dict:
    """LocalCluster arguments: `workers` processes of one task at a time, each with its share of the cores for torch."""
    # A Dask nanny sets OMP_NUM_THREADS=1 in every worker it spawns unless its own environment
    # has one (distributed.nanny.pre-spawn-environ; it also writes it into the flow's process,
    # which decodes nothing under dask). runtime.setup gives torch that many threads; a local
    # cluster's workers get the cores divided among them instead, so N workers neither
    # oversubscribe the machine nor leave cores idle.
    share = max(1, runtime.cores() // workers)
    return {"n_workers": workers, "threads_per_worker": 1, "processes": True, "env": {"OMP_NUM_THREADS": str(share)}}


def check(p: EvalParams) -> None:
    """Fail at once, in one line, when `eval.dask_address` names no scheduler with a worker (the grid would wait on it)."""
    if p.runner != "dask" or not p.dask_address:
        return
    import distributed
    from distributed.exceptions import WorkerStartTimeoutError

    address = p.dask_address
    try:
        with distributed.Client(address, timeout=CONNECT_TIMEOUT, set_as_default=False) as client:
            try:
                client.wait_for_workers(1, timeout=CONNECT_TIMEOUT)
            except WorkerStartTimeoutError:
                raise ClusterUnavailable(f"eval.dask_address {address}: the scheduler has no workers; start them from this checkout "
                                         f"(`dask worker {address} --nthreads 1`)") from None
    except (OSError, ValueError) as err:
        raise ClusterUnavailable(f"eval.dask_address {address}: no Dask scheduler answered ({err}); start one there (`dask scheduler`, "
                                 f"then `dask worker {address} --nthreads 1` from this checkout) or set eval.dask_address: \"\" "
                                 f"for a local cluster") from None
