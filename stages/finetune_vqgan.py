"""Stage `finetune_vqgan`: train the tokenizer (from scratch or vqgan.init) -> paths.vqgan, metrics/vqgan.json."""
from __future__ import annotations

import sys
import time

import mlflow

from maskgit_inpaint import config, tracking
from maskgit_inpaint.data import shards
from maskgit_inpaint.io import atomic_dir, write_json
from maskgit_inpaint.models.checkpoint import save_model
from maskgit_inpaint.training import vqgan
from maskgit_inpaint.training.curves import write_curve


def main(params_file: str = str(config.DEFAULT_PARAMS)) -> None:
    began = time.perf_counter()
    params = config.load(params_file)
    p, paths = params.vqgan, params.paths
    image_size = shards.load_manifest(paths.shards).image_size
    init = None if p.init is None else paths.pretrained / p.init  # an absolute init stays as it is
    state = paths.checkpoints / "vqgan.pt"
    tags = {"image_size": image_size, "init": str(init or "scratch")}
    with tracking.run("vqgan", run_name="finetune_vqgan", params=p.model_dump(mode="json"), tags=tags):
        result = vqgan.train(p, image_size, paths.shards, state, init)
        with atomic_dir(paths.vqgan) as tmp:
            save_model(result.model, tmp, extra={"steps": p.steps, "init": str(init) if init else None,
                                                 "metrics": result.metrics})
        mlflow.log_artifacts(str(paths.vqgan), artifact_path="model")
        mlflow.set_tags({f"unavailable.{k}": v for k, v in result.unavailable.items()})
        mlflow.log_params(tracking.runtime_params(result.precision))
    write_json(paths.metrics / "vqgan.json", {**result.metrics, "runtime": result.precision.facts(), "unavailable": result.unavailable})
    write_curve(paths.metrics / "vqgan_curve.csv", result.curve)
    state.unlink(missing_ok=True)  # outs are complete: nothing left to resume
    m = result.metrics
    lpips = f"LPIPS {m['recon_lpips']:.3f}" if "recon_lpips" in m else "LPIPS unavailable"
    print(f"finetune_vqgan: {p.steps} steps from {init or 'scratch'}, f={result.model.config.downsample}, "
          f"K={result.model.config.n_embed}; val recon PSNR {m['init_recon_psnr']:.2f} -> {m['recon_psnr']:.2f} dB, "
          f"SSIM {m['recon_ssim']:.3f}, {lpips}, codebook usage {m['codebook_usage']:.0%} "
          f"(perplexity {m['codebook_perplexity']:.0f}); {m['train_images_per_s']:.0f} img/s, "
          f"{m['input_wait_share']:.0%} of it waiting on input, {result.precision.describe()} -> {paths.vqgan} "
          f"({time.perf_counter() - began:.0f}s)")


if __name__ == "__main__":
    main(*sys.argv[1:])
