"""Publish a finished grid: tables and pictures on disk, metrics for DVC, then runs in MLflow.

Everything lands on disk (results/, metrics/eval.json, metrics/eval_summary.json)
before MLflow is touched, so a tracking store that is down or locked costs the runs,
never the results: one warning, and results/NOT_LOGGED.txt says what is missing and
how to log it.

metrics/eval.json is what `dvc metrics show` and `dvc metrics diff` read: the profile's
name, then flat numbers: per mask kind and headline metric the held-out pick's value and interval on
the report half, how many cells tie with it, and the baselines on the same half.
Everything that describes them (which cell, the tied cells, verdicts and p-values,
the runtime, unavailable metrics) is in metrics/eval_summary.json beside it.

results/grid_by_area.csv splits each cell's per-image metrics by mask-area bucket
(LaMa's 0-10%, 10-20%, ...), from the hole sizes masks.json records.

A report needs nothing but the cells and masks.json: each cell carries what it was
scored on and each trajectory its sample strip, so a grid whose cells all come from
the cache loads no model, image or metric backbone to be published.
"""
from __future__ import annotations

import warnings

import mlflow
import numpy as np
import pandas as pd

from maskgit_inpaint import evaluation, figures, grid_stats, runtime, tracking
from maskgit_inpaint.data import eval_masks
from maskgit_inpaint.config import EvalParams, PathsParams
from maskgit_inpaint.io import atomic_dir, write_json

HEATMAP_METRICS = ("psnr_masked", "ssim_masked", "swd_masked", "lpips_masked")
LABELS = {"psnr_masked": "PSNR(masked)", "ssim_masked": "SSIM(masked)", "swd_masked": "SWD(masked)", "lpips_masked": "LPIPS(masked)"}
UNITS = {"psnr_masked": " dB"}
HEADLINE_METRICS = ("psnr_masked", "swd_masked")
METRICS_FILE_METRICS = HEADLINE_METRICS + ("lpips_masked",)  # in eval.json where they have values
METRICS_FILE_BASELINES = ("telea", "vq_ceiling")
CORRECTION = ("Holm over each family: one mask kind, one metric, one reference; "
              "per-image metrics by Wilcoxon signed-rank, set-level ones by the paired bootstrap's standard error")


class TrackingUnavailable(UserWarning):
    """The MLflow store could not take the grid's runs; the results on disk are complete."""


class NothingScored(RuntimeError):
    """Every cell of the grid failed: there is no table to publish."""


def _clean(obj):
    """NaN -> null throughout, so eval_summary.json stays valid JSON."""
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_clean(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer)):
        obj = obj.item()
    return None if isinstance(obj, float) and not np.isfinite(obj) else obj


def mask_summary(df: pd.DataFrame, result: grid_stats.GridStats, mask: str) -> dict:
    """Per mask kind, for metrics/eval_summary.json: the held-out picks and the baselines with their intervals (all images)."""
    rows = df[df["mask"] == mask]
    baselines = {}
    for method in ("telea", "vq_ceiling"):
        row = rows[rows.method == method]
        if len(row) and row.status.iloc[0] == "ok":
            r = row.iloc[0]
            baselines[method] = {m: {"value": r[m], "lo": r[f"{m}_lo"], "hi": r[f"{m}_hi"]} for m in grid_stats.INTERVAL_METRICS}
        elif len(row):
            baselines[method] = {"status": row.status.iloc[0]}
    return {"picks": {m: pick.as_json() for m, pick in result.picks.get(mask, {}).items()}, **baselines}


def eval_metrics(df: pd.DataFrame, result: grid_stats.GridStats, masks: tuple[str, ...], report_images: int) -> dict[str, float]:
    """metrics/eval.json: flat and numeric; a figure that has no finite value is left out."""
    out = {"cells": len(df), "failed_cells": int((df.status != "ok").sum()), "report_images": report_images}
    for mask in masks:
        for metric in METRICS_FILE_METRICS:
            pick = result.picks.get(mask, {}).get(metric)
            if pick is None:  # no decoded cell has the metric (its backbone is missing, or every cell failed)
                continue
            best = f"{mask}.best_{metric}"
            out.update({best: pick.report.value, f"{best}_lo": pick.report.lo, f"{best}_hi": pick.report.hi,
                        f"{best}_ties": len(pick.tied)})
            out.update({f"{mask}.{name}_{metric}": pick.against[name]["baseline_value"]
                        for name in METRICS_FILE_BASELINES if name in pick.against})
    return {k: v.item() if isinstance(v, np.generic) else v for k, v in out.items() if np.isfinite(v)}


def marks(df: pd.DataFrame, result: grid_stats.GridStats, metric: str) -> pd.Series:
    """Per row: 2 for the held-out pick of its mask kind, 1 for the cells tied with it, 0 otherwise."""
    out = pd.Series(0, index=df.index)
    for mask, picks in result.picks.items():
        pick = picks.get(metric)
        if pick is None:
            continue
        for cells, value in ((pick.tied, 1), ([pick.cell], 2)):
            for cell in cells:
                hit = np.ones(len(df), dtype=bool)
                for k, v in cell.items():
                    hit &= (df[k].isna() if v is None else (df[k] == v)).to_numpy(dtype=bool, na_value=False)
                out[hit] = value
    return out


def figures_for(df: pd.DataFrame, result: grid_stats.GridStats, trajectories: dict, masks: tuple[str, ...]) -> dict[str, figures.Figure]:
    """Heatmaps per metric (ties outlined, interval half-widths shown) and one sample strip per mask kind."""
    out = {}
    for metric in HEATMAP_METRICS:
        if df[metric].notna().any():
            marked = df.assign(mark=marks(df, result, metric))
            out[f"heatmap_{metric}.png"] = figures.heatmap(marked, metric)
            out[f"heatmap_T_{metric}.png"] = figures.heatmap_by_T(marked, metric)
    for mask in masks:
        pick = result.picks.get(mask, {}).get("swd_masked")
        if pick is None or pick.cell["T"] is None:
            continue
        cell = pick.cell
        strip = trajectories[(mask, cell["schedule"], cell["token_temperature"], cell["T"])].samples
        columns = {"input": strip.masked_input, "mask": strip.mask,
                   **{f"k={k}/{cell['T']}": strip.steps[k] for k in sorted(strip.steps)}, "original": strip.original}
        out[f"samples_{mask}.png"] = figures.sample_strip(columns, f"{mask} mask: {cell['schedule']} T={cell['T']}, step by step")
    return out


def markdown(df: pd.DataFrame, result: grid_stats.GridStats, unavailable: dict[str, str], confidence: float) -> str:
    """The table people read: value [lo, hi] per metric; * marks the pick, = the cells tied with it."""
    shown = df[evaluation.COLUMNS].astype(object).where(df[evaluation.COLUMNS].notna(), None)
    for metric in grid_stats.INTERVAL_METRICS:
        if metric in unavailable:
            shown[metric] = "unavailable"
            continue
        flag = marks(df, result, metric) if metric in evaluation.HELD_OUT else pd.Series(0, index=df.index)
        shown[metric] = [
            None if pd.isna(v) else f"{v:.4g}" + ("" if pd.isna(lo) else f" [{lo:.4g}, {hi:.4g}]") + {0: "", 1: " =", 2: " *"}[f]
            for v, lo, hi, f in zip(df[metric], df[f"{metric}_lo"], df[f"{metric}_hi"], flag)]
    legend = (f"\nIntervals: {confidence:.0%} bootstrap over images. `*`: the best cell of its mask kind, chosen on the "
              f"selection half of the images; `=`: cells a paired test on the report half cannot tell from it "
              f"({CORRECTION}). Every comparison is in grid_comparisons.csv.\n")
    return shown.to_markdown(index=False) + "\n" + legend


def _fmt(v: float, digits: int = 1) -> str:
    return "n/a" if v is None or not np.isfinite(v) else f"{v:.{digits}f}"


def headline(mask: str, metric: str, pick: grid_stats.Pick | None, cells_of_kind: int) -> str:
    """One line per mask kind and metric: the held-out pick, its ties, and its difference to the baselines."""
    if pick is None:
        return f"eval_grid [{mask}]: no decoded cell has {metric}"
    digits = 2 if metric == "psnr_masked" else 3 if metric in ("ssim_masked", "lpips_masked") else 1
    r, unit = pick.report, UNITS.get(metric, "")
    against = "; ".join(
        f"vs {name.replace('_', ' ').replace('t1', 'T=1')} {c['difference']:+.{digits}f} [{_fmt(c['lo'], digits)}, {_fmt(c['hi'], digits)}] ({c['verdict']})"
        for name, c in pick.against.items())
    return (f"eval_grid [{mask}]: best {grid_stats.name_of(pick.cell)}: {LABELS[metric]} {r.value:.{digits}f}{unit} "
            f"[{_fmt(r.lo, digits)}, {_fmt(r.hi, digits)}] (report half), tied with {len(pick.tied)} of {cells_of_kind - 1} cells; {against}")


def runs_views(metrics: dict[str, float], masks: tuple[str, ...], parent_run: str) -> tuple[tracking.RunsView, tracking.RunsView]:
    """The MLflow runs-table views of a grid: its headline figures (the parent runs' eval.json metrics), and its cells."""
    headline = tracking.RunsView("grid-headline", metrics=tuple(
        key for mask in masks for metric in HEADLINE_METRICS
        for key in (f"{mask}.best_{metric}", f"{mask}.best_{metric}_lo", f"{mask}.best_{metric}_hi", f"{mask}.telea_{metric}")
        if key in metrics))
    cells = tracking.RunsView("grid-cells", params=tuple(grid_stats.CELL_KEYS),
                              metrics=tuple(f"{metric}{end}" for metric in HEADLINE_METRICS for end in ("", "_lo", "_hi")),
                              tags=("in_best_set.swd_masked",), order_by_metric="swd_masked",
                              search_filter=f"tags.mlflow.parentRunId = '{parent_run}'")
    return headline, cells


def _log(paths: PathsParams, p: EvalParams, *, profile: str, spec: evaluation.GridSpec, df: pd.DataFrame, result: grid_stats.GridStats,
         pictures: dict, precision: runtime.Precision, unavailable: dict[str, str], metrics: dict[str, float]) -> str:
    """The parent run (table, per-image file, figures, tied sets) and one child per cell (intervals, verdicts); returns where to look."""
    records = df.astype(object).where(df.notna(), None)
    best_sets = {metric: marks(df, result, metric) for metric in evaluation.HELD_OUT}
    tied_tags = {f"best_set.{mask}.{metric}": "; ".join(grid_stats.name_of(c) for c in [pick.cell] + pick.tied)[:5000]
                 for mask, picks in result.picks.items() for metric, pick in picks.items()}
    with tracking.run("eval-grid", run_name=f"grid-{spec.fingerprint}", profile=profile,
                      params={**p.model_dump(mode="json"), **tracking.runtime_params(precision)},
                      tags={"fingerprint": spec.fingerprint, "vqgan": paths.vqgan.as_posix(), "transformer": paths.transformer.as_posix(),
                            "correction": CORRECTION, **tied_tags,
                            **{f"unavailable.{c}": r[:5000] for c, r in unavailable.items()}}) as parent:
        verdict_columns = [c for c in df.columns if "_vs_" in c]
        child_tags = [{**{f"verdict.{c}": str(row[c]) for c in verdict_columns if row[c] is not None},
                       **{f"in_best_set.{m}": str(bool(best_sets[m][i] > 0)).lower() for m in evaluation.HELD_OUT}}
                      for i, row in records.iterrows()]
        metric_keys = evaluation.METRICS + [c for c in df.columns if c.endswith(("_lo", "_hi"))]
        tracking.log_child_runs(parent, records.to_dict("records"), grid_stats.CELL_KEYS, metric_keys, child_tags)
        mlflow.log_table(records, artifact_file="grid.json")
        mlflow.log_artifacts(str(paths.results), artifact_path="results")
        for name, fig in pictures.items():
            mlflow.log_figure(fig, f"figures/{name}")
        mlflow.log_metrics(metrics)  # the same names and values as metrics/eval.json
        headline, cells = (tracking.share_runs_view(parent.info.experiment_id, view)
                           for view in runs_views(metrics, p.masks, parent.info.run_id))
    return f"eval_grid: logged to MLflow {tracking.tracking_uri()}; runs table: {headline} (this grid's cells: {cells})"


def announce_tracking() -> None:
    """At the grid's start, the line a tracking server that is down gives, so it is seen before hours of decoding."""
    try:
        tracking.require_reachable()
    except tracking.TrackingServerUnreachable as error:
        print(f"eval_grid: {error} (the grid runs anyway: results/ first, then results/NOT_LOGGED.txt says what to log)")


def publish(paths: PathsParams, p: EvalParams, spec: evaluation.GridSpec, trajectories: dict, baselines: list[evaluation.Cell],
            failed: list[evaluation.Cell], *, profile: str) -> dict:
    """Write results/, metrics/eval.json and metrics/eval_summary.json, then log the grid to MLflow; returns the per-mask summary."""
    cells = baselines + [c for t in trajectories.values() for c in t.cells] + failed
    scored = [c.scored_on for c in cells if c.scored_on is not None]
    if not scored:
        raise NothingScored(f"eval_grid: all {len(cells)} cells failed, the first with {cells[0].row['status']}")
    precision = scored[0].precision  # every cell ran in the spec's precision: it is in each cell's cache key
    halves = evaluation.Resampling.of(spec, scored[0].images).split
    result = grid_stats.compute(cells, halves, grid_stats.Settings(p.confidence, p.bootstrap_resamples, p.seed))
    df = result.table
    unavailable = {column: reason for s in scored for column, reason in s.unavailable.items()}
    no_interval = {} if "fid" in unavailable else dict(grid_stats.NO_INTERVAL)
    for column, reason in sorted(unavailable.items()):
        print(f"eval_grid: {column} unavailable: {reason}")
    for column, reason in no_interval.items():
        print(f"eval_grid: {column} has no interval: {reason}")
    per_mask = {mask: mask_summary(df, result, mask) for mask in p.masks}
    metrics = eval_metrics(df, result, p.masks, len(halves.report))
    pictures = figures_for(df, result, trajectories, p.masks)
    with atomic_dir(paths.results) as out:
        df.to_csv(out / "grid.csv", index=False)
        df.to_parquet(out / "grid.parquet", index=False)
        (out / "grid.md").write_text(markdown(df, result, unavailable, p.confidence))
        result.comparisons.to_csv(out / "grid_comparisons.csv", index=False)
        result.comparisons.to_parquet(out / "grid_comparisons.parquet", index=False)
        grid_stats.per_image_table(cells, halves).to_parquet(out / "grid_per_image.parquet", index=False)
        buckets = {kind: eval_masks.area_buckets(paths.masks, kind, scored[0].images) for kind in p.masks}
        grid_stats.by_area(cells, buckets).to_csv(out / "grid_by_area.csv", index=False)
        for name, fig in pictures.items():
            figures.save(fig, out / name, close=False)
    write_json(paths.metrics / "eval.json", {"profile": profile, **metrics})
    write_json(paths.metrics / "eval_summary.json", _clean({
        "about": "metrics/eval.json holds, per mask kind and metric, the pick's value and interval on the report half, "
                 "its tied count and the baselines on the same half; the tables in results/ use all images",
        "masks": per_mask, "cells": len(df), "failed_cells": metrics["failed_cells"],
        "confidence": p.confidence, "bootstrap_resamples": p.bootstrap_resamples, "replicates": p.replicates,
        "selection_images": len(halves.selection), "report_images": len(halves.report), "correction": CORRECTION,
        "runtime": precision.facts(), "unavailable": unavailable, "no_interval": no_interval}))
    logged = None
    try:
        tracking.require_reachable()  # fails in seconds where the runs would retry for minutes
        logged = _log(paths, p, profile=profile, spec=spec, df=df, result=result, pictures=pictures, precision=precision,
                      unavailable=unavailable, metrics=metrics)
    except Exception as error:  # noqa: BLE001 - any store failure: the results on disk stand
        message = (f"MLflow store {tracking.tracking_uri()} could not take the grid ({type(error).__name__}: {error}); "
                   f"results/ and metrics/eval.json are complete. Not logged: the parent run, {len(df)} child runs, "
                   f"{len(pictures)} figures. Once the store is up, `dvc repro --force --single-item eval_grid` logs them "
                   f"(every cell comes from the cache; without --single-item, --force retrains the models too).")
        warnings.warn(message, TrackingUnavailable, stacklevel=2)
        (paths.results / "NOT_LOGGED.txt").write_text(message + "\n")
    finally:
        for fig in pictures.values():
            figures.close(fig)
    for mask in p.masks:
        kind = int(((df["mask"] == mask) & (df.method == "maskgit") & (df.status == "ok")).sum())
        for metric in HEADLINE_METRICS:
            print(headline(mask, metric, result.picks.get(mask, {}).get(metric), kind))
    if logged:
        print(logged)
    print(f"eval_grid: {len(df)} cells ({metrics['failed_cells']} failed) over {len(trajectories)} trajectories, "
          f"{p.confidence:.0%} intervals from {p.bootstrap_resamples} resamples, {precision.describe()} -> {paths.results}")
    return per_mask
