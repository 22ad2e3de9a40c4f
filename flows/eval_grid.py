"""Prefect flow `eval-grid`: one task per decoding trajectory (mask, schedule, T), mapped.

Step 1 of every trajectory of a mask kind is the same decode (evaluation.py), so each
mask kind decodes one T = 1 trajectory whose cell serves every k = 1 cell, and the
other trajectories decode their sweet spots k > 1.

Cells are cached by their inputs (the GridSpec carries the model/token/code
fingerprint and the mask seed), so a re-run with more T values decodes only the
new trajectories. A trajectory or baseline that still fails after its retries is
marked in the table while the others finish (a grid where every cell fails raises
grid_report.NothingScored). Results are persisted as each task ends, so a grid killed
mid-run resumes from the cells it finished; a re-run whose cells all come from the
cache loads no model or image (the cells carry what the report needs).
The DVC stage `eval_grid` calls this flow in-process; `flows/serve.py` serves it
as deployment `eval-grid/default`.
"""
from __future__ import annotations

import itertools

import maskgit_inpaint  # noqa: F401  (first: applies the environment defaults Prefect reads at import)
from prefect import flow, task, unmapped
from prefect.cache_policies import INPUTS, TASK_SOURCE
from prefect.task_runners import ThreadPoolTaskRunner

from maskgit_inpaint import config, evaluation, grid_report

# Keyed by the task's inputs and its source: tasks that take the same GridSpec must not share entries.
CELL_CACHE = INPUTS + TASK_SOURCE


@task(name="trajectory", retries=2, retry_delay_seconds=5, cache_policy=CELL_CACHE, persist_result=True)
def trajectory(spec: evaluation.GridSpec, mask: str, schedule: str, T: int, sweet_spots: tuple[int, ...]) -> evaluation.Trajectory:
    return evaluation.run_trajectory(spec, mask, schedule, T, sweet_spots)


@task(name="vq-ceiling", retries=2, retry_delay_seconds=5, cache_policy=CELL_CACHE, persist_result=True)
def vq_ceiling(spec: evaluation.GridSpec, mask: str) -> evaluation.Cell:
    return evaluation.vq_ceiling(spec, mask)


@task(name="telea", retries=2, retry_delay_seconds=5, cache_policy=CELL_CACHE, persist_result=True)
def telea(spec: evaluation.GridSpec, mask: str) -> evaluation.Cell:
    return evaluation.telea(spec, mask)


# One trajectory at a time: each already uses every core (or the GPU), and timings
# stay clean. To spread a grid over machines, swap in prefect-dask's or prefect-ray's runner.
@flow(name="eval-grid", task_runner=ThreadPoolTaskRunner(max_workers=1), log_prints=True)
def eval_grid(
    params_file: str = str(config.DEFAULT_PARAMS),
    masks: list[str] | None = None,
    schedules: list[str] | None = None,
    T: list[int] | None = None,
    sweet_spots: list[int] | None = None,
) -> dict:
    """Run the grid of params.yaml's `eval` section (optionally overriding its axes); returns the best cells."""
    params = config.load(params_file)
    overrides = {k: tuple(v) for k, v in {"masks": masks, "schedules": schedules, "T": T, "sweet_spots": sweet_spots}.items() if v}
    p = config.EvalParams.model_validate({**params.eval.model_dump(), **overrides})
    spec = evaluation.spec_for(params.paths, p)
    # Step 1 is the same decode in every trajectory of a mask kind: one T = 1 trajectory each serves every k = 1 cell.
    firsts = dict(zip(p.masks, trajectory.map(unmapped(spec), list(p.masks), unmapped(p.schedules[0]), unmapped(1), unmapped((1,)))))
    plan = [(m, s, t, tuple(k for k in p.sweet_spots if 1 < k <= t)) for m in p.masks for s in p.schedules for t in p.T if t > 1]
    rests = dict(zip(((m, s, t) for m, s, t, _ in plan), trajectory.map(unmapped(spec), *(list(axis) for axis in zip(*plan))))) if plan else {}
    baselines = {(task_.name, m): task_.submit(spec, m) for m in p.masks for task_ in (vq_ceiling, telea)}
    trajectories, failed = {}, []
    for m, s, t in itertools.product(p.masks, p.schedules, p.T):
        try:
            rest = rests[(m, s, t)].result() if t > 1 else None
            trajectories[(m, s, t)] = evaluation.with_first_step(firsts[m].result(), rest, s, t)
        except Exception as error:  # noqa: BLE001 - any failure of one cell is recorded, the grid goes on
            print(f"eval-grid: trajectory mask={m} schedule={s} T={t} failed after retries: {error!r}")
            failed += evaluation.failed_cells(m, s, t, tuple(k for k in p.sweet_spots if k <= t), error)
    done = []
    for (name, m), future in baselines.items():
        try:
            done.append(future.result())
        except Exception as error:  # noqa: BLE001 - a failed baseline is a row that says so
            print(f"eval-grid: baseline {name} mask={m} failed after retries: {error!r}")
            done.append(evaluation.failed_baseline(name.replace("-", "_"), m, error))
    return grid_report.publish(params.paths, p, spec, trajectories, done, failed, profile=params.profile)
