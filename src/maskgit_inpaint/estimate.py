"""Expected time per stage of a profile on one GPU: an estimate from FLOP counts, never a measurement.

    python -m maskgit_inpaint.estimate places365 [--gpu H100] [--utilisation 0.3]

The transformer's FLOPs are training_flops_per_token, the figure its MFU is measured
against. The convolutional networks' (VQGAN encoder and decoder, the LPIPS trunk, the
PatchGAN, Inception for FID) are counted by torch's FlopCounterMode on one image on the
meta device: shapes only, no weights, no compute. A stage's time is its FLOPs over the
GPU's dense bf16 peak (runtime.PEAK_DENSE_FLOPS) times an assumed utilisation: 0.3
by default, in the range tuned training reaches (convolutions at small batch, often
less). Reading and decoding images (shard, and the JPEG decode under every stage) is
I/O and CPU work the FLOPs leave out; so are checkpoints, validation and Telea.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from torch.utils.flop_counter import FlopCounterMode

from maskgit_inpaint import config, profiles, runtime
from maskgit_inpaint.data.scenes import CATEGORIES
from maskgit_inpaint.models.losses import PatchDiscriminator
from maskgit_inpaint.models.transformer import TransformerConfig
from maskgit_inpaint.models.vqgan import VQGAN
from maskgit_inpaint.training import transformer as transformer_training
from maskgit_inpaint.training import vqgan as vqgan_training

PLACES365_IMAGES = {"train": 1_803_460, "val": 36_500}  # Places365-Standard, the download page's counts
BACKWARD = 2.0  # a backward pass costs about twice its forward (gradients of inputs and of weights)


@dataclass(frozen=True)
class Stage:
    name: str
    flops: float
    what: str  # how the count was made up


def _forward_flops(module: torch.nn.Module, *inputs: torch.Tensor) -> float:
    """FLOPs of one forward pass, counted on the meta device (module and inputs already there)."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(*inputs)
    return float(counter.get_total_flops())


def _images(p: config.Params, split: str) -> int:
    """Images of `split` the shard stage keeps: the source's count, cut to data.max_train / max_val."""
    if p.data.source == "embedded":
        per = p.sample.train_per_category if split == "train" else p.sample.val_per_category
        available = len(CATEGORIES) * per
    else:
        available = PLACES365_IMAGES[split]
    limit = p.data.max_train if split == "train" else p.data.max_val
    return available if limit is None else min(limit, available)


class _Nets:
    """The profile's networks on the meta device, with one-image forward FLOPs of each."""

    def __init__(self, p: config.Params):
        size = p.data.image_size
        with torch.device("meta"):
            image = torch.zeros(1, 3, size, size)
            vqgan = VQGAN(vqgan_training.model_config(p.vqgan, size))
            grid = size // p.vqgan.downsample
            ids = torch.zeros(1, grid, grid, dtype=torch.long)
            self.encoder = _forward_flops(vqgan.encode_continuous, image)
            self.decoder = _forward_flops(vqgan.decode_indices, ids)
            # LPIPS: its trunk on both images (the 1x1 heads and scaling are a rounding error of it).
            self.loss_lpips = 2 * _forward_flops(self._lpips_trunk(p.vqgan.perceptual_trunk), image)
            self.metric_lpips = 2 * _forward_flops(self._lpips_trunk("alex"), image)
            self.disc = _forward_flops(PatchDiscriminator(3, p.vqgan.disc_ch, p.vqgan.disc_layers), image)
            inception = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=False)
            self.inception = _forward_flops(inception, torch.zeros(1, 3, 299, 299))  # FID resizes to 299
        self.tokens = grid * grid
        self.transformer = TransformerConfig(codebook_size=p.vqgan.n_embed, n_tokens=self.tokens, n_layer=p.transformer.n_layer,
                                             n_head=p.transformer.n_head, n_embd=p.transformer.n_embd,
                                             mlp_ratio=p.transformer.mlp_ratio)


    @staticmethod
    def _lpips_trunk(name: str) -> torch.nn.Module:
        """The torchvision layers LPIPS runs (lpips.pretrained_networks slices these same features)."""
        return (torchvision.models.vgg16 if name == "vgg" else torchvision.models.alexnet)(weights=None).features


def stages(p: config.Params) -> list[Stage]:
    """FLOPs of every stage of the chain under params `p`."""
    nets, v, t, e = _Nets(p), p.vqgan, p.transformer, p.eval
    encoder_passes = 1 + BACKWARD * ("encoder" in v.train_parts)
    adversarial = v.disc_weight > 0
    per_image = (encoder_passes * nets.encoder + (1 + BACKWARD) * nets.decoder
                 + (v.perceptual_weight > 0) * (nets.loss_lpips + BACKWARD * nets.loss_lpips / 2)  # the gradient flows into one image
                 + adversarial * ((1 + BACKWARD) * nets.disc + 2 * (1 + BACKWARD) * nets.disc))  # generator term; real + fake D step
    images_seen = v.steps * v.batch_size * v.grad_accum_steps
    train_images, val_images = _images(p, "train"), _images(p, "val")
    per_token = transformer_training.training_flops_per_token(nets.transformer)
    forward_pass = per_token / (1 + BACKWARD) * nets.tokens  # one image, one decoding step
    n = min(e.num_images, val_images)
    shared = e.start_step == 0
    passes = cells = 0
    for _ in range(len(e.masks) * len(e.token_temperature)):
        passes += shared
        cells += shared
        for _schedule in e.schedules:
            for T in e.T:
                lowest = 1 if shared else e.start_step
                if T > lowest:
                    passes += T - e.start_step
                    cells += len({k for k in e.sweet_spots if lowest < k <= T} | {T})
    cells += len(e.masks)  # the VQ ceiling of each mask kind
    per_cell = nets.decoder + nets.metric_lpips + e.fid * nets.inception
    return [
        Stage("finetune_vqgan", images_seen * per_image,
              f"{v.steps} steps x {v.batch_size * v.grad_accum_steps} images x {per_image / 1e9:.0f} GFLOP"),
        Stage("extract_tokens", (train_images + val_images) * nets.encoder,
              f"{train_images + val_images} images x {nets.encoder / 1e9:.0f} GFLOP encode"),
        Stage("train_transformer", t.steps * t.batch_size * nets.tokens * per_token,
              f"{t.steps} steps x {t.batch_size} x {nets.tokens} tokens x {per_token / 1e6:.0f} MFLOP"),
        Stage("eval_grid", n * (passes * forward_pass + cells * per_cell + e.fid * nets.inception),
              f"{n} images x ({passes} transformer passes + {cells} cells x {per_cell / 1e9:.0f} GFLOP decode and score)"),
    ]


def _duration(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min" if seconds >= 60 else f"{seconds:.0f} s"


def report(p: config.Params, gpu: str, utilisation: float) -> str:
    peak = runtime.peak_flops(gpu)
    if peak is None:
        raise ValueError(f"no peak FLOP/s for {gpu!r}; one of {sorted(runtime.PEAK_DENSE_FLOPS)}")
    rows = stages(p)
    lines = [f"profile {p.profile}: estimate on one {gpu} at {utilisation:.0%} of its {peak / 1e12:.0f} TFLOP/s dense bf16 peak "
             "(FLOP counts, not a measurement; image I/O not included)"]
    for stage in rows:
        lines.append(f"  {stage.name:<18} {stage.flops / 1e15:10.1f} PFLOP  {_duration(stage.flops / (peak * utilisation)):>8}  {stage.what}")
    total = sum(s.flops for s in rows)
    lines.append(f"  {'total':<18} {total / 1e15:10.1f} PFLOP  {_duration(total / (peak * utilisation)):>8}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m maskgit_inpaint.estimate", description=__doc__.split("\n")[0])
    parser.add_argument("profile", nargs="?", help="a profile in profiles/ (default: the active one)")
    parser.add_argument("--params", type=Path, default=config.DEFAULT_PARAMS)
    parser.add_argument("--gpu", default="H100", help="a name in runtime.PEAK_DENSE_FLOPS")
    parser.add_argument("--utilisation", type=float, default=0.3, help="assumed share of the peak reached")
    args = parser.parse_args(argv)
    try:
        params = profiles.load_profile(args.profile, args.params) if args.profile else config.load(args.params)
        print(report(params, args.gpu, args.utilisation))
    except (config.ParamsError, ValueError) as error:
        print(error, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
