"""Publish a finished grid: tables and pictures on disk, metrics for DVC, runs in MLflow."""
from __future__ import annotations

import mlflow
import pandas as pd

from maskgit_inpaint import evaluation, figures, tracking
from maskgit_inpaint.config import EvalParams, PathsParams
from maskgit_inpaint.io import atomic_dir, write_json

HEATMAP_METRICS = ("psnr_masked", "ssim_masked", "swd_masked", "lpips_masked")
CELL_KEYS = ["method", "mask", "schedule", "T", "sweet_spot"]


def unavailable_metrics(spec: evaluation.GridSpec) -> dict[str, str]:
    """Metric column -> why it has no values (its pretrained backbone is missing)."""
    data = evaluation.load_data(spec)
    reasons = {}
    for backbone, columns in ((data.lpips, ("lpips", "lpips_masked")), (data.fid, ("fid",))):
        if not backbone.available:
            reasons.update({c: backbone.reason for c in columns})
    return reasons


def summary(df: pd.DataFrame, mask: str) -> dict:
    """Per mask kind: the best decoded cells and the baselines, for metrics/eval.json."""
    rows = df[df["mask"] == mask]
    baselines = {m: {k: None if pd.isna(v := rows[rows.method == m][k].item()) else v for k in evaluation.METRICS}
                 for m in ("vq_ceiling", "telea")}  # NaN -> null: eval.json stays valid JSON
    return {"best": evaluation.best_cell(rows, "psnr_masked"),
            "most_realistic": evaluation.best_cell(rows, "swd_masked", lower_is_better=True), **baselines}


def figures_for(spec: evaluation.GridSpec, df: pd.DataFrame, trajectories: dict, masks: tuple[str, ...]) -> dict[str, figures.Figure]:
    """Heatmaps per metric and one sample strip per mask kind (the most realistic trajectory, step by step)."""
    out = {}
    for metric in HEATMAP_METRICS:
        if df[metric].notna().any():
            out[f"heatmap_{metric}.png"] = figures.heatmap(df, metric)
            out[f"heatmap_T_{metric}.png"] = figures.heatmap_by_T(df, metric)
    for mask in masks:
        cell = evaluation.best_cell(df[df["mask"] == mask], "swd_masked", lower_is_better=True)
        if cell is None:
            continue
        inputs = evaluation.sample_inputs(spec, mask)
        steps = trajectories[(mask, cell["schedule"], cell["T"])].samples
        columns = {"input": inputs["input"], "mask": inputs["mask"],
                   **{f"k={k}/{cell['T']}": steps[k] for k in sorted(steps)}, "original": inputs["original"]}
        out[f"samples_{mask}.png"] = figures.sample_strip(columns, f"{mask} mask: {cell['schedule']} T={cell['T']}, step by step")
    return out


def publish(paths: PathsParams, p: EvalParams, spec: evaluation.GridSpec, trajectories: dict, baselines: list[dict],
            failed: list[dict]) -> dict:
    """Write results/ and metrics/eval.json, log the parent run with one child per cell; returns the per-mask summary."""
    df = evaluation.table(baselines + [row for t in trajectories.values() for row in t.rows] + failed)
    unavailable = unavailable_metrics(spec)
    prec = evaluation.load_data(spec).precision
    for column, reason in sorted(unavailable.items()):
        print(f"eval_grid: {column} unavailable: {reason}")
    records = df.astype(object).where(df.notna(), None)  # NA -> None: blank in markdown, null in json
    readable = records.copy()
    for column in unavailable:
        readable[column] = "unavailable"
    per_mask = {mask: summary(df, mask) for mask in p.masks}
    pictures = figures_for(spec, df, trajectories, p.masks)
    with atomic_dir(paths.results) as out:
        df.to_csv(out / "grid.csv", index=False)
        df.to_parquet(out / "grid.parquet", index=False)
        (out / "grid.md").write_text(readable.to_markdown(index=False, floatfmt=".4g") + "\n")
        with tracking.run("eval-grid", run_name=f"grid-{spec.fingerprint}",
                          params={**p.model_dump(mode="json"), **tracking.runtime_params(prec)},
                          tags={"fingerprint": spec.fingerprint, "vqgan": paths.vqgan.as_posix(), "transformer": paths.transformer.as_posix(),
                                **{f"unavailable.{c}": r[:5000] for c, r in unavailable.items()}}) as parent:
            tracking.log_child_runs(parent, records.to_dict("records"), CELL_KEYS, evaluation.METRICS)
            mlflow.log_table(records, artifact_file="grid.json")
            mlflow.log_artifacts(str(out), artifact_path="results")
            for name, fig in pictures.items():
                mlflow.log_figure(fig, f"figures/{name}")
                figures.save(fig, out / name)
            for mask, s in per_mask.items():
                if s["best"] is not None:
                    mlflow.log_metrics({f"{mask}.best_{k}": s["best"][k] for k in evaluation.METRICS if s["best"][k] is not None})
    write_json(paths.metrics / "eval.json", {"masks": per_mask, "cells": len(df), "failed_cells": len(failed),
                                             "runtime": prec.facts(), "unavailable": unavailable})
    for mask, s in per_mask.items():
        print(headline(mask, s))
    print(f"eval_grid: {len(df)} cells ({len(failed)} failed) over {len(trajectories)} trajectories, {prec.describe()} "
          f"-> {paths.results}")
    return per_mask


def headline(mask: str, s: dict) -> str:
    """One line per mask kind: the best cells against the baselines."""
    best, real, telea, ceiling = s["best"], s["most_realistic"], s["telea"], s["vq_ceiling"]
    if best is None:
        return f"eval_grid [{mask}]: every decoded cell failed"
    return (f"eval_grid [{mask}]: best {best['schedule']} T={best['T']} k={best['sweet_spot']}: PSNR(masked) "
            f"{best['psnr_masked']:.2f} dB (Telea {telea['psnr_masked']:.2f}, VQGAN ceiling {ceiling['psnr_masked']:.2f}); "
            f"most realistic {real['schedule']} T={real['T']} k={real['sweet_spot']}: SWD(masked) {real['swd_masked']:.1f} "
            f"(Telea {telea['swd_masked']:.1f}, ceiling {ceiling['swd_masked']:.1f})")
