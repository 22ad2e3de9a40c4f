"""Stage `finetune_vqgan`: train the tokenizer (from scratch or vqgan.init) -> paths.vqgan, metrics/vqgan.json.

metrics/vqgan.json holds numbers only; where they came from (device, precision) and why a
metric is missing go to metrics/vqgan_summary.json beside it.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import mlflow

from maskgit_inpaint import config, tracking
from maskgit_inpaint.data import shards
from maskgit_inpaint.io import atomic_dir, write_json
from maskgit_inpaint.models.checkpoint import save_model
from maskgit_inpaint.training import vqgan
from maskgit_inpaint.training.curves import write_curve


def summary_line(result: vqgan.VQGANResult, steps: int, init_path: Path | None, out: Path) -> str:
    final, initial = result.metrics.final, result.metrics.initial
    lpips_text = "LPIPS unavailable" if final.lpips is None else f"LPIPS {final.lpips:.3f}"
    return (f"finetune_vqgan: {steps} steps from {init_path or 'scratch'}, f={result.model.config.downsample}, "
            f"K={result.model.config.n_embed}; val recon PSNR {initial.psnr:.2f} -> {final.psnr:.2f} dB, "
            f"SSIM {final.ssim:.3f}, {lpips_text}, codebook usage {final.codebook.usage:.0%} "
            f"(perplexity {final.codebook.perplexity:.0f}); {result.metrics.train_images_per_s:.0f} img/s, "
            f"{result.metrics.input_wait_share:.0%} of it waiting on input, {result.precision.describe()} -> {out}")


def main(params_file: str = str(config.DEFAULT_PARAMS)) -> None:
    began = time.perf_counter()
    try:  # before any data or model is loaded: a tracking server that is down costs one line, not a training
        tracking.require_reachable()
    except tracking.TrackingServerUnreachable as error:
        sys.exit(f"finetune_vqgan: {error}")
    params = config.load(params_file)
    p, paths = params.vqgan, params.paths
    image_size = shards.load_manifest(paths.shards).image_size
    init_path = None if p.init is None else paths.pretrained / p.init  # an absolute init stays as it is
    state_path = paths.checkpoints / "vqgan.pt"
    tags = {"image_size": image_size, "init": str(init_path or "scratch")}
    with tracking.run("vqgan", run_name="finetune_vqgan", params=p.model_dump(mode="json"), tags=tags,
                      profile=params.profile):
        result = vqgan.train(p, image_size=image_size, shards_dir=paths.shards, state_path=state_path, init_path=init_path)
        # Built before any out is written: a field the line names that is gone fails here, not after the outs.
        summary = summary_line(result, p.steps, init_path, paths.vqgan)
        # What defines the weights only: identical weights give an identical directory, so nothing downstream reruns.
        with atomic_dir(paths.vqgan) as tmp:
            save_model(result.model, tmp, extra={"steps": p.steps, "init": str(init_path) if init_path else None})
        mlflow.log_artifacts(str(paths.vqgan), artifact_path="model")
        mlflow.set_tags({f"unavailable.{k}": v for k, v in result.unavailable.items()})
        mlflow.log_params(tracking.runtime_params(result.precision))
    write_json(paths.metrics / "vqgan.json", {"profile": params.profile, **result.metrics.flat()})
    write_json(paths.metrics / "vqgan_summary.json",
               {"runtime": result.precision.facts(), "unavailable": result.unavailable})
    write_curve(paths.metrics / "vqgan_curve.csv", result.curve)
    state_path.unlink(missing_ok=True)  # outs are complete: nothing left to resume
    print(f"{summary} ({time.perf_counter() - began:.0f}s)")


if __name__ == "__main__":
    main(*sys.argv[1:])
