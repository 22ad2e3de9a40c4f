"""Stage `train_transformer`: MVTM on the token arrays -> paths.transformer, metrics/transformer.json.

Runs as one process (`python -m stages.train_transformer`, what DVC calls) or as N under
`torchrun --nproc_per_node N -m stages.train_transformer`; rank 0 writes the outs.
"""
from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path

import mlflow

from maskgit_inpaint import config, runtime, tracking
from maskgit_inpaint.io import atomic_dir, write_json
from maskgit_inpaint.models.checkpoint import save_model
from maskgit_inpaint.training import distributed, transformer
from maskgit_inpaint.training.curves import write_curve


def gpu_flops(metrics: transformer.TransformerMetrics, precision: runtime.Precision) -> str:
    """The summary's model FLOP/s per GPU and MFU; empty for a CPU run, which measures neither."""
    if metrics.tflops_per_s is None:
        return ""
    utilisation = (f"MFU {metrics.mfu:.1%}" if metrics.mfu is not None
                   else f"unknown peak ({precision.hardware.name} is not in runtime.PEAK_DENSE_FLOPS)")
    return f", {metrics.tflops_per_s:.1f} TFLOP/s per GPU, {utilisation}"


def summary_line(metrics: transformer.TransformerMetrics, precision: runtime.Precision, out: Path) -> str:
    per_ratio = ", ".join(f"{score.accuracy:.3f} at {ratio}" for ratio, score in metrics.val.items())
    return (f"train_transformer: {metrics.steps} steps, {metrics.parameters / 1e6:.2f}M params, {metrics.processes} process(es), "
            f"{metrics.tokens_per_s:.0f} tokens/s{gpu_flops(metrics, precision)}; val masked-token accuracy {per_ratio} "
            f"(most-frequent-token baseline {metrics.baseline_accuracy:.3f}), {precision.describe()} -> {out}")


def run_summary(metrics: transformer.TransformerMetrics, precision: runtime.Precision) -> dict:
    """metrics/transformer_summary.json: what describes the figures of transformer.json rather than being one."""
    return {"eval_mask_ratios": list(metrics.val), "runtime": precision.facts()}


def main(params_file: str = str(config.DEFAULT_PARAMS)) -> None:
    began = time.perf_counter()
    try:  # every process, before the process group, data or model: a server that is down costs one line
        tracking.require_reachable()
    except tracking.TrackingServerUnreachable as error:
        sys.exit(f"train_transformer: {error}")
    params = config.load(params_file)
    p, paths = params.transformer, params.paths
    procs, dev = distributed.start(p.seed)
    state = paths.checkpoints / "transformer.pt"
    run = tracking.run("transformer", run_name="train_transformer", params=p.model_dump(mode="json"),
                       tags={"processes": procs.world}, profile=params.profile) if procs.main else contextlib.nullcontext()
    with run:
        result = transformer.train(p, paths.tokens, state, procs, dev)
        if procs.main:
            # Everything the outs and the summary read from the result is read before any out is written.
            line = summary_line(result.metrics, result.precision, paths.transformer)
            flat, described = result.metrics.flat(), run_summary(result.metrics, result.precision)
            with atomic_dir(paths.transformer) as tmp:
                save_model(result.model, tmp, extra={"steps": p.steps})
            mlflow.log_artifacts(str(paths.transformer), artifact_path="model")
            mlflow.log_params(tracking.runtime_params(result.precision))
    distributed.stop(procs)
    if not procs.main:
        return
    write_json(paths.metrics / "transformer.json", {"profile": params.profile, **flat})
    write_json(paths.metrics / "transformer_summary.json", described)
    ratios = [f"val_accuracy_{r}" for r in p.eval_mask_ratios]
    write_curve(paths.metrics / "transformer_train.csv", result.curve, ["step", "train_loss", "lr", "tokens_per_s"])
    write_curve(paths.metrics / "transformer_val.csv", result.curve, ["step", "val_accuracy", "val_nll", *ratios])
    state.unlink(missing_ok=True)  # outs are complete: nothing left to resume
    print(f"{line} ({time.perf_counter() - began:.0f}s)")


if __name__ == "__main__":
    main(*sys.argv[1:])
