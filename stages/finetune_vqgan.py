"""Stage `finetune_vqgan`: train the tokenizer on the train shards -> paths.vqgan, metrics/vqgan.json."""
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
    image_size = shards.load_manifest(paths.shards)["image_size"]
    state = paths.checkpoints / "vqgan.pt"
    with tracking.run("vqgan", run_name="finetune_vqgan", params=p.model_dump(mode="json"), tags={"image_size": image_size}):
        result = vqgan.train(p, image_size, paths.shards, state)
        with atomic_dir(paths.vqgan) as tmp:
            save_model(result.model, tmp, extra={"steps": p.steps, "metrics": result.metrics})
        mlflow.log_artifacts(str(paths.vqgan), artifact_path="model")
    write_json(paths.metrics / "vqgan.json", result.metrics)
    write_curve(paths.metrics / "vqgan_curve.csv", result.curve)
    state.unlink(missing_ok=True)  # outs are complete: nothing left to resume
    m = result.metrics
    print(f"finetune_vqgan: {p.steps} steps, f={result.model.config.downsample}, K={result.model.config.n_embed}; "
          f"val recon PSNR {m['recon_psnr']:.2f} dB, SSIM {m['recon_ssim']:.3f}, codebook usage {m['codebook_usage']:.0%} "
          f"-> {paths.vqgan} ({time.perf_counter() - began:.0f}s)")


if __name__ == "__main__":
    main(*sys.argv[1:])
