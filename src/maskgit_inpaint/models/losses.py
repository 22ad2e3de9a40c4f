"""Tokenizer training losses as taming-transformers' VQLPIPSWithDiscriminator defines them.

Generator side: L1 + perceptual (LPIPS) reconstruction, the codebook loss, and a
PatchGAN hinge term whose weight adapts so that its gradient at the decoder's last
layer has the size of the reconstruction gradient there. Discriminator side: the
hinge loss on real images vs reconstructions. The adversarial terms switch on at
`disc_start`. Images are (B, 3, H, W) in [-1, 1].
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from maskgit_inpaint.models.checkpoint import ForeignCheckpointError, key_map_problems, listed

# Where taming's VQLPIPSWithDiscriminator keeps its NLayerDiscriminator in a VQModel checkpoint.
TAMING_DISCRIMINATOR_PREFIX = "loss.discriminator."


@dataclass(frozen=True)
class LossConfig:
    perceptual_weight: float  # LPIPS term; 0 (or no pretrained trunk available) leaves L1 alone
    disc_weight: float  # scale of the adaptive adversarial weight; 0 turns the GAN off
    disc_start: int  # optimizer step from which the adversarial terms count
    codebook_weight: float = 1.0  # taming's default


class PatchDiscriminator(nn.Module):
    """PatchGAN (pix2pix) as taming builds it: strided 4x4 convs -> one logit per overlapping patch.

    Module names follow taming's NLayerDiscriminator (`main.<i>`), so its `loss.discriminator.*`
    tensors have the same layout.
    """

    def __init__(self, in_channels: int = 3, ch: int = 64, n_layers: int = 3):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, ch, 4, stride=2, padding=1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers + 1):
            previous, mult = mult, min(2 ** n, 8)
            stride = 2 if n < n_layers else 1  # the last block keeps the resolution
            layers += [nn.Conv2d(ch * previous, ch * mult, 4, stride=stride, padding=1, bias=False),  # BatchNorm has the bias
                       nn.BatchNorm2d(ch * mult), nn.LeakyReLU(0.2, True)]
        layers.append(nn.Conv2d(ch * mult, 1, 4, stride=1, padding=1))
        self.main = nn.Sequential(*layers)
        self.apply(_init_weights)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.main(images)  # (B, 1, h, w) patch logits


def load_taming_discriminator(state: dict[str, torch.Tensor], discriminator: PatchDiscriminator, path: Path | str) -> bool:
    """Start `discriminator` from the `loss.discriminator.*` tensors of a taming checkpoint's state dict.

    Returns False, loading nothing, when the file holds none of them (a checkpoint saved
    without its loss). Otherwise every key and shape must match, running statistics
    included; a discriminator of another size fails with the list and the disc_layers /
    disc_ch the file was built with. `path` names the file in messages.
    """
    weights = {k: v for k, v in state.items() if k.startswith(TAMING_DISCRIMINATOR_PREFIX)}
    if not weights:
        return False
    expected = discriminator.state_dict()
    key_map = {TAMING_DISCRIMINATOR_PREFIX + name: name for name in expected}  # our module names are taming's
    problems = key_map_problems(weights, key_map, expected)
    if problems:
        raise ForeignCheckpointError(
            f"{path}: its discriminator does not fit vqgan.disc_layers / disc_ch ({len(problems)} problems; "
            f"{len(weights)} {TAMING_DISCRIMINATOR_PREFIX}* tensors in the file, {len(key_map)} expected):"
            + listed(problems) + f"\n{_discriminator_hint(weights)}"
        )
    discriminator.load_state_dict({ours: weights[k] for k, ours in key_map.items()})
    print(f"loaded {len(key_map)} discriminator tensors from {path}")
    return True


def _discriminator_hint(weights: dict[str, torch.Tensor]) -> str:
    first = weights.get(TAMING_DISCRIMINATOR_PREFIX + "main.0.weight")
    convs = sum(1 for k, v in weights.items() if k.endswith(".weight") and v.ndim == 4)  # norm weights are 1-D
    if first is None or convs < 3:  # a first conv, at least one normed block, a last conv
        return "That is not a whole taming NLayerDiscriminator; download the checkpoint again."
    return (f"The file's discriminator looks like: disc_layers={convs - 2}, disc_ch={first.shape[0]}; "
            "set these in params.yaml `vqgan`.")


def _init_weights(module: nn.Module) -> None:
    # DCGAN initialisation, as taming's weights_init.
    if isinstance(module, nn.Conv2d):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def adaptive_weight(nll: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor, scale: float) -> torch.Tensor:
    """scale * |grad nll| / |grad g_loss| at the decoder's last layer: the GAN term neither drowns nor dominates."""
    nll_grad = torch.autograd.grad(nll, last_layer, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    return (nll_grad.norm() / (g_grad.norm() + 1e-4)).clamp(0.0, 1e4).detach() * scale


class TokenizerLoss:
    """Both sides of the VQGAN objective; `perceptual` is a pretrained LPIPS network or None."""

    def __init__(self, config: LossConfig, perceptual: nn.Module | None, discriminator: PatchDiscriminator | None):
        self.config = config
        self.perceptual = perceptual if config.perceptual_weight > 0 else None
        self.discriminator = discriminator if config.disc_weight > 0 else None

    def adversarial(self, step: int) -> bool:
        return self.discriminator is not None and step >= self.config.disc_start

    def generator(self, images: torch.Tensor, recon: torch.Tensor, vq_loss: torch.Tensor, step: int,
                  last_layer: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Loss for the tokenizer's parameters and its parts for logging."""
        recon = recon.float()
        l1 = (images - recon).abs().mean()
        nll = l1
        log = {"l1": l1.item()}
        if self.perceptual is not None:
            p_loss = self.perceptual(recon, images).mean()
            nll = nll + self.config.perceptual_weight * p_loss
            log["perceptual"] = p_loss.item()
        loss = nll + self.config.codebook_weight * vq_loss
        if self.adversarial(step):
            self.discriminator.requires_grad_(False)  # this pass trains the tokenizer only
            g_loss = -self.discriminator(recon).mean()
            self.discriminator.requires_grad_(True)
            weight = adaptive_weight(nll, g_loss, last_layer, self.config.disc_weight)
            loss = loss + weight * g_loss
            log.update(g_loss=g_loss.item(), d_weight=weight.item())
        log.update(vq=vq_loss.item(), loss=loss.item())
        return loss, log

    def discriminator_loss(self, images: torch.Tensor, recon: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        logits_real = self.discriminator(images)
        logits_fake = self.discriminator(recon.detach().float())
        d_loss = hinge_d_loss(logits_real, logits_fake)
        return d_loss, {"d_loss": d_loss.item(), "logits_real": logits_real.mean().item(),
                        "logits_fake": logits_fake.mean().item()}
