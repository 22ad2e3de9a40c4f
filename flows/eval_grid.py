"""Prefect flow `eval-grid`: one task per decoding trajectory (mask, schedule, token temperature, T), mapped.

Step 1 of every trajectory of a mask kind and token temperature is the same decode
(evaluation.py), so each such pair decodes one T = 1 trajectory whose cell serves every
k = 1 cell, and the other trajectories decode their sweet spots k > 1. Decoding that
starts later in the schedule (eval.start_step > 0, MaskGIT's editing path) has no k = 1
cell to share: every trajectory then decodes its sweet spots k > start_step itself.

Cells are cached by their inputs (the GridSpec carries the model/token/code
fingerprint and the mask seed), so a re-run with more T values decodes only the
new trajectories. A trajectory or baseline that still fails after its retries is
marked in the table while the others finish (a grid where every cell fails raises
grid_report.NothingScored). Results are persisted as each task ends, so a grid killed
mid-run resumes from the cells it finished; a re-run whose cells all come from the
cache loads no model or image (the cells carry what the report needs).

Where the tasks run is a setting, `eval.runner` (grid_runner.py): threads in this
process, or a Dask cluster (prefect-dask's DaskTaskRunner), local or at
`eval.dask_address`. Prefect fixes a flow's task runner at definition, so the flow
`eval-grid` reads the params and runs its subflow `eval-grid-cells`, which holds the
tasks, with that runner (`with_options`); a deployment run follows the params file it
is given, as the DVC stage does.

The DVC stage `eval_grid` calls this flow in-process; `flows/serve.py` serves it
as deployment `eval-grid/default`.
"""
from __future__ import annotations

import itertools

import maskgit_inpaint  # noqa: F401  (first: applies the environment defaults Prefect reads at import)
from prefect import flow, task, unmapped
from prefect.cache_policies import INPUTS, TASK_SOURCE
from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_API_URL, temporary_settings

from maskgit_inpaint import config, evaluation, grid_report, grid_runner
from maskgit_inpaint.data import eval_masks

# Keyed by the task's inputs and its source: tasks that take the same GridSpec must not share entries.
CELL_CACHE = INPUTS + TASK_SOURCE


@task(name="trajectory", retries=2, retry_delay_seconds=5, cache_policy=CELL_CACHE, persist_result=True)
def trajectory(spec: evaluation.GridSpec, mask: str, schedule: str, T: int, sweet_spots: tuple[int, ...],
               token_temperature: float) -> evaluation.Trajectory:
    return evaluation.run_trajectory(spec, mask, schedule, T, sweet_spots, token_temperature)


@task(name="vq-ceiling", retries=2, retry_delay_seconds=5, cache_policy=CELL_CACHE, persist_result=True)
def vq_ceiling(spec: evaluation.GridSpec, mask: str) -> evaluation.Cell:
    return evaluation.vq_ceiling(spec, mask)


@task(name="telea", retries=2, retry_delay_seconds=5, cache_policy=CELL_CACHE, persist_result=True)
def telea(spec: evaluation.GridSpec, mask: str) -> evaluation.Cell:
    return evaluation.telea(spec, mask)


@flow(name="eval-grid", log_prints=True)
def eval_grid(
    params_file: str = str(config.DEFAULT_PARAMS),
    masks: list[str] | None = None,
    schedules: list[str] | None = None,
    T: list[int] | None = None,
    sweet_spots: list[int] | None = None,
    token_temperature: list[float] | None = None,
) -> dict:
    """Run the grid of params.yaml's `eval` section (optionally overriding its axes) where `eval.runner` says; returns the best cells."""
    grid_report.announce_tracking()
    cells = grid_cells.with_options(task_runner=grid_runner.task_runner(config.load(params_file).eval))
    with temporary_settings({PREFECT_API_URL: _api_url()}):
        return cells(params_file=params_file, masks=masks, schedules=schedules, T=T, sweet_spots=sweet_spots,
                     token_temperature=token_temperature)


def _api_url() -> str:
    """The API this flow run reports to. Tasks on Dask workers report to the one the flow's settings
    name, and Prefect's temporary server (no PREFECT_API_URL) is in none: each worker would start its own."""
    if url := PREFECT_API_URL.value():
        return url
    with get_client(sync_client=True) as client:
        return str(client.api_url)


@flow(name="eval-grid-cells", log_prints=True)  # its task runner comes from eval_grid
def grid_cells(params_file: str, masks: list[str] | None, schedules: list[str] | None, T: list[int] | None,
               sweet_spots: list[int] | None, token_temperature: list[float] | None) -> dict:
    """The grid's tasks and its report."""
    params = config.load(params_file)
    overrides = {k: tuple(v) for k, v in {"masks": masks, "schedules": schedules, "T": T, "sweet_spots": sweet_spots,
                                           "token_temperature": token_temperature}.items() if v}
    p = config.EvalParams.model_validate({**params.eval.model_dump(), **overrides})
    eval_masks.check(params.paths.masks, kinds=p.masks, seed=p.seed, num_images=p.num_images, random_token_ratio=p.random_token_ratio)
    spec = evaluation.spec_for(params.paths, p)
    axes = list(itertools.product(p.masks, p.schedules, p.token_temperature, p.T))  # (mask, schedule, tau, T) per trajectory
    shared = p.start_step == 0  # then step 1 is one decode per (mask, tau): a T = 1 trajectory serves every k = 1 cell
    pairs = list(itertools.product(p.masks, p.token_temperature)) if shared else []
    firsts = dict(zip(pairs, trajectory.map(unmapped(spec), [m for m, _ in pairs], unmapped(p.schedules[0]), unmapped(1),
                                            unmapped((1,)), [tau for _, tau in pairs]))) if pairs else {}
    lowest = 1 if shared else p.start_step  # sweet spots decoded by the trajectory itself lie above this
    plan = [(m, s, t, tuple(k for k in p.sweet_spots if lowest < k <= t), tau) for m, s, tau, t in axes if t > lowest]
    rests = dict(zip(((m, s, tau, t) for m, s, t, _, tau in plan),
                     trajectory.map(unmapped(spec), *(list(axis) for axis in zip(*plan))))) if plan else {}
    baselines = {(task_.name, m): task_.submit(spec, m) for m in p.masks for task_ in (vq_ceiling, telea)}
    trajectories, failed = {}, []
    for m, s, tau, t in axes:
        try:
            rest = rests[(m, s, tau, t)].result() if t > lowest else None
            trajectories[(m, s, tau, t)] = evaluation.with_first_step(firsts[(m, tau)].result(), rest, s, t) if shared else rest
        except Exception as error:  # noqa: BLE001 - any failure of one cell is recorded, the grid goes on
            print(f"eval-grid: trajectory mask={m} schedule={s} token_temperature={tau} T={t} failed after retries: {error!r}")
            failed += evaluation.failed_cells(m, s, tau, t, tuple(k for k in p.sweet_spots if p.start_step < k <= t), error)
    done = []
    for (name, m), future in baselines.items():
        try:
            done.append(future.result())
        except Exception as error:  # noqa: BLE001 - a failed baseline is a row that says so
            print(f"eval-grid: baseline {name} mask={m} failed after retries: {error!r}")
            done.append(evaluation.failed_baseline(name.replace("-", "_"), m, error))
    return grid_report.publish(params.paths, p, spec, trajectories, done, failed, profile=params.profile)
