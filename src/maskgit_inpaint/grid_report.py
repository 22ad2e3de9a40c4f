"""Publish a finished grid: tables and pictures on disk, metrics for DVC, runs in MLflow."""
from __future__ import annotations

import mlflow

from maskgit_inpaint import evaluation, figures, tracking
from maskgit_inpaint.config import EvalParams, PathsParams
from maskgit_inpaint.io import atomic_dir, write_json

HEATMAP_METRICS = ("psnr_masked", "ssim_masked", "swd_masked")
CELL_KEYS = ["method", "schedule", "T", "sweet_spot", "mask"]


def publish(paths: PathsParams, p: EvalParams, spec: evaluation.GridSpec, trajectories: dict, baselines: list[dict]) -> dict:
    """Write results/ and metrics/eval.json, log the parent run with one child per cell; returns the best cell."""
    rows = baselines + [row for t in trajectories.values() for row in t.rows]
    by_method = {b["method"]: b for b in baselines}
    df = evaluation.table(rows)
    best = evaluation.best_cell(df, "psnr_masked")
    most_realistic = evaluation.best_cell(df, "swd_masked", lower_is_better=True)
    readable = df.astype(object).where(df.notna(), None)  # NA -> None: blank in markdown, null in json
    heatmaps = {m: figures.heatmap(df, m) for m in HEATMAP_METRICS}
    inputs, originals = evaluation.masked_inputs(spec)
    top_T = max(p.T)
    columns = {"input": inputs, **{f"{s} T={top_T}": trajectories[(s, top_T)].samples for s in p.schedules}, "original": originals}
    strip = figures.sample_strip(columns)
    with atomic_dir(paths.results) as out:
        df.to_csv(out / "grid.csv", index=False)
        df.to_parquet(out / "grid.parquet", index=False)
        (out / "grid.md").write_text(readable.to_markdown(index=False, floatfmt=".4g") + "\n")
        for metric, fig in heatmaps.items():
            figures.save(fig, out / f"heatmap_{metric}.png")
        figures.save(strip, out / "samples.png")
        with tracking.run("eval-grid", run_name=f"grid-{spec.fingerprint}", params=p.model_dump(mode="json"),
                          tags={"fingerprint": spec.fingerprint, "vqgan": paths.vqgan.as_posix(), "transformer": paths.transformer.as_posix()}) as parent:
            tracking.log_child_runs(parent, readable.to_dict("records"), CELL_KEYS, evaluation.METRICS)
            mlflow.log_table(readable, artifact_file="grid.json")
            mlflow.log_artifacts(str(out), artifact_path="results")
            mlflow.log_metrics({f"best_{k}": best[k] for k in evaluation.METRICS})
    summaries = {method: {k: b[k] for k in evaluation.METRICS} for method, b in by_method.items()}
    write_json(paths.metrics / "eval.json", {"best": best, "most_realistic": most_realistic, **summaries, "cells": len(df)})
    ceiling, telea = by_method["vq_ceiling"], by_method["telea"]
    print(
        f"eval_grid: {len(df)} cells over {len(trajectories)} trajectories; best {best['schedule']} T={best['T']} "
        f"k={best['sweet_spot']}: PSNR(masked) {best['psnr_masked']:.2f} dB, SSIM(masked) {best['ssim_masked']:.3f} "
        f"(Telea {telea['psnr_masked']:.2f}, VQGAN ceiling {ceiling['psnr_masked']:.2f} dB); most realistic {most_realistic['schedule']} "
        f"T={most_realistic['T']} k={most_realistic['sweet_spot']}: SWD(masked) {most_realistic['swd_masked']:.1f} "
        f"(Telea {telea['swd_masked']:.1f}, ceiling {ceiling['swd_masked']:.1f}) -> {paths.results}"
    )
    return best
