"""VQGAN tokenizer with taming-transformers' module layout.

Parameter names follow taming's `VQModel` (encoder.down.0.block.0.conv1.weight,
quantize.embedding.weight, ...) so that its public checkpoints map onto this model
key by key. Images are (B, 3, H, W) in [-1, 1]; tokens are (B, H/f, W/f) code ids.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from maskgit_inpaint.models.checkpoint import (ForeignCheckpointError, key_map_problems, listed, read_foreign_state_dict,
                                               read_model)

# taming's checkpoints carry its training loss (LPIPS + PatchGAN discriminator) under `loss.`; the tokenizer needs none of it
# (fine-tuning starts its discriminator from `loss.discriminator.*`: losses.load_taming_discriminator).
TAMING_DROPPED_PREFIX = "loss."


@dataclass(frozen=True)
class VQGANConfig:
    resolution: int = 64  # training image size; attention placement is keyed to it
    in_channels: int = 3
    out_ch: int = 3
    ch: int = 32  # base channels (GroupNorm(32) needs multiples of 32)
    ch_mult: tuple[int, ...] = (1, 2, 2)  # per-level channel multipliers; f = 2 ** (levels - 1)
    num_res_blocks: int = 1  # resnet blocks per level (decoder uses one more)
    attn_resolutions: tuple[int, ...] = ()  # feature-map sizes that get self-attention
    z_channels: int = 64  # encoder output channels
    double_z: bool = False  # taming's VQGAN sets False (True is for KL autoencoders)
    dropout: float = 0.0
    embed_dim: int = 64  # code vector size
    n_embed: int = 128  # codebook size K
    beta: float = 0.25  # commitment weight

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    def token_grid(self, image_size: int) -> int:
        return image_size // self.downsample

    def decode_activation_bytes(self, image_size: int) -> int:
        """The largest fp32 activation of decoding one image (its full-resolution level): sizes CPU chunks."""
        return 4 * self.ch * self.ch_mult[0] * image_size * image_size

    @classmethod
    def from_dict(cls, d: dict) -> "VQGANConfig":
        d = dict(d)
        for k in ("ch_mult", "attn_resolutions"):
            d[k] = tuple(d[k])
        return cls(**d)


def Normalize(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=32, num_channels=channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, dropout: float):
        super().__init__()
        self.norm1 = Normalize(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = Normalize(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        # taming names the 1x1 projection of the skip path nin_shortcut.
        self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.nin_shortcut(x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the spatial positions of a feature map."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = Normalize(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        h = self.norm(x)
        q, k, v = (m(h).reshape(B, 1, C, H * W).transpose(2, 3) for m in (self.q, self.k, self.v))  # (B, 1, HW, C)
        h = F.scaled_dot_product_attention(q, k, v)  # (B, 1, HW, C)
        h = h.transpose(2, 3).reshape(B, C, H, W)
        return x + self.proj_out(h)


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # taming's asymmetric pad keeps the grid aligned


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def _level(stage: nn.Module, h: torch.Tensor, resample: str) -> torch.Tensor:
    """One resolution level: resnet blocks, each followed by attention where the level has it, then resampling."""
    for i, block in enumerate(stage.block):
        h = block(h)
        if len(stage.attn) > 0:
            h = stage.attn[i](h)
    return getattr(stage, resample)(h) if hasattr(stage, resample) else h


class Encoder(nn.Module):
    def __init__(self, c: VQGANConfig):
        super().__init__()
        self.conv_in = nn.Conv2d(c.in_channels, c.ch, 3, padding=1)
        in_mult = (1,) + tuple(c.ch_mult)
        resolution = c.resolution
        self.down = nn.ModuleList()
        for level, mult in enumerate(c.ch_mult):
            stage = nn.Module()
            block_in, block_out = c.ch * in_mult[level], c.ch * mult
            stage.block = nn.ModuleList()
            stage.attn = nn.ModuleList()
            for _ in range(c.num_res_blocks):
                stage.block.append(ResnetBlock(block_in, block_out, c.dropout))
                block_in = block_out
                if resolution in c.attn_resolutions:
                    stage.attn.append(AttnBlock(block_in))
            if level != len(c.ch_mult) - 1:
                stage.downsample = Downsample(block_in)
                resolution //= 2
            self.down.append(stage)
        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(block_in, block_in, c.dropout)
        self.mid.attn_1 = AttnBlock(block_in)
        self.mid.block_2 = ResnetBlock(block_in, block_in, c.dropout)
        self.norm_out = Normalize(block_in)
        self.conv_out = nn.Conv2d(block_in, 2 * c.z_channels if c.double_z else c.z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)  # (B, ch, H, W)
        for stage in self.down:
            h = _level(stage, h, "downsample")
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))  # (B, C, H/f, W/f)
        return self.conv_out(F.silu(self.norm_out(h)))  # (B, z, H/f, W/f)


class Decoder(nn.Module):
    def __init__(self, c: VQGANConfig):
        super().__init__()
        block_in = c.ch * c.ch_mult[-1]
        resolution = c.resolution // c.downsample
        self.conv_in = nn.Conv2d(c.z_channels, block_in, 3, padding=1)
        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(block_in, block_in, c.dropout)
        self.mid.attn_1 = AttnBlock(block_in)
        self.mid.block_2 = ResnetBlock(block_in, block_in, c.dropout)
        # Built from the coarsest level up, stored finest first as taming does (up.0 is full resolution).
        up = []
        for level in reversed(range(len(c.ch_mult))):
            stage = nn.Module()
            block_out = c.ch * c.ch_mult[level]
            stage.block = nn.ModuleList()
            stage.attn = nn.ModuleList()
            for _ in range(c.num_res_blocks + 1):
                stage.block.append(ResnetBlock(block_in, block_out, c.dropout))
                block_in = block_out
                if resolution in c.attn_resolutions:
                    stage.attn.append(AttnBlock(block_in))
            if level != 0:
                stage.upsample = Upsample(block_in)
                resolution *= 2
            up.insert(0, stage)
        self.up = nn.ModuleList(up)
        self.norm_out = Normalize(block_in)
        self.conv_out = nn.Conv2d(block_in, c.out_ch, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(z)  # (B, C, h, w)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        for stage in reversed(self.up):
            h = _level(stage, h, "upsample")
        return self.conv_out(F.silu(self.norm_out(h)))  # (B, 3, H, W)


class VectorQuantizer(nn.Module):
    """Nearest-code lookup with a straight-through gradient."""

    def __init__(self, n_embed: int, embed_dim: int, beta: float):
        super().__init__()
        self.beta = beta
        self.embedding = nn.Embedding(n_embed, embed_dim)
        self.embedding.weight.data.uniform_(-1.0 / n_embed, 1.0 / n_embed)

    def codes(self, z: torch.Tensor) -> torch.Tensor:
        """(B, e, h, w) -> nearest code ids (B, h, w)."""
        flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1]).float()  # (B*h*w, e)
        codebook = self.embedding.weight.float()  # (K, e)
        distance = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ codebook.t() + codebook.pow(2).sum(1)[None]  # (B*h*w, K)
        return distance.argmin(1).view(z.shape[0], z.shape[2], z.shape[3])

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, h, w) code ids -> (B, e, h, w) code vectors."""
        return self.embedding(ids).permute(0, 3, 1, 2)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        z = z.float()  # distances and the codebook loss in fp32, also under autocast
        ids = self.codes(z)
        z_q = self.lookup(ids)
        # Codebook term pulls codes to encoder outputs; commitment term (beta) the reverse.
        loss = F.mse_loss(z_q, z.detach()) + self.beta * F.mse_loss(z, z_q.detach())
        z_q = z + (z_q - z).detach()  # straight-through estimator
        return z_q, loss, ids


class VQGAN(nn.Module):
    def __init__(self, config: VQGANConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.quantize = VectorQuantizer(config.n_embed, config.embed_dim, config.beta)
        self.quant_conv = nn.Conv2d(config.z_channels, config.embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(config.embed_dim, config.z_channels, 1)

    def encode_continuous(self, images: torch.Tensor) -> torch.Tensor:
        return self.quant_conv(self.encoder(images))  # (B, e, h, w)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Reconstruct: returns (images (B, 3, H, W), vq loss, ids (B, h, w), pre-quantization z (B, e, h, w))."""
        z = self.encode_continuous(images)
        z_q, vq_loss, ids = self.quantize(z)
        return self.decoder(self.post_quant_conv(z_q)), vq_loss, ids, z

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> token ids (B, h, w)."""
        return self.quantize.codes(self.encode_continuous(images))

    @torch.no_grad()
    def decode_indices(self, ids: torch.Tensor) -> torch.Tensor:
        """Token ids (B, h, w) -> images (B, 3, H, W), clamped to [-1, 1]."""
        z_q = self.quantize.lookup(ids)  # (B, e, h, w)
        return self.decoder(self.post_quant_conv(z_q)).float().clamp(-1, 1)

    @classmethod
    def from_taming_checkpoint(cls, path: Path | str, config: VQGANConfig | None = None, resolution: int = 256) -> "VQGAN":
        """A CompVis/taming-transformers VQModel checkpoint (e.g. vqgan_imagenet_f16_1024.ckpt) -> model.

        `config` is the architecture the file must match (params.yaml); None reads it off
        the tensor shapes, with attention placed for `resolution` px inputs. Every key and
        shape is checked through `taming_key_map`; anything off fails with the list.
        """
        return cls.from_taming_state_dict(read_foreign_state_dict(path), path, config, resolution)

    @classmethod
    def from_taming_state_dict(cls, state: dict[str, torch.Tensor], path: Path | str, config: VQGANConfig | None,
                               resolution: int) -> "VQGAN":
        """`from_taming_checkpoint` on the file's tensors, read once by a caller that also starts the
        discriminator from them (`path` names the file in messages)."""
        weights = {k: v for k, v in state.items() if not k.startswith(TAMING_DROPPED_PREFIX)}
        model = cls(config or infer_taming_config(weights, resolution, path))
        expected = model.state_dict()
        key_map = taming_key_map(model)
        problems = key_map_problems(weights, key_map, expected)
        if problems:
            raise ForeignCheckpointError(
                f"{path}: does not fit the configured VQGAN ({len(problems)} problems; {len(weights)} tensors in the file, "
                f"{len(key_map)} expected):" + listed(problems) + f"\n{_architecture_hint(weights, resolution, path)}"
            )
        model.load_state_dict({ours: weights[k] for k, ours in key_map.items()})
        print(f"loaded {len(key_map)} tensors from {path} (dropped {len(state) - len(weights)} {TAMING_DROPPED_PREFIX}* tensors)")
        return model

    @classmethod
    def load(cls, directory, device: str | torch.device = "cpu") -> "VQGAN":
        """A tokenizer saved by `checkpoint.save_model` (the finetune_vqgan stage's out)."""
        info, state = read_model(directory, made_by="finetune_vqgan", device=device)
        model = cls(VQGANConfig.from_dict(info["model"]))
        model.load_state_dict(state)
        return model.to(device).eval()


def taming_key_map(model: VQGAN) -> dict[str, str]:
    """Checkpoint key -> parameter of `model`. Our modules carry taming's names, so the map is
    the identity over our state dict: it lists exactly the tensors the file must hold."""
    return {name: name for name in model.state_dict()}


def infer_taming_config(weights: dict[str, torch.Tensor], resolution: int, path: Path | str) -> VQGANConfig:
    """The architecture a taming VQModel state dict was built with, read off its tensor shapes."""
    def shape(key: str) -> torch.Size:
        if key not in weights:
            raise ForeignCheckpointError(f"{path}: no {key}; not a taming-transformers VQModel checkpoint")
        return weights[key].shape

    ch = shape("encoder.conv_in.weight")[0]
    levels = sum(1 for k in weights if k.startswith("encoder.down.") and k.endswith(".block.0.conv1.weight"))
    z_channels = shape("decoder.conv_in.weight")[1]
    n_embed, embed_dim = shape("quantize.embedding.weight")
    return VQGANConfig(
        resolution=resolution,
        in_channels=shape("encoder.conv_in.weight")[1],
        out_ch=shape("decoder.conv_out.weight")[0],
        ch=ch,
        ch_mult=tuple(shape(f"encoder.down.{i}.block.0.conv1.weight")[0] // ch for i in range(levels)),
        num_res_blocks=sum(1 for k in weights if k.startswith("encoder.down.0.block.") and k.endswith(".conv1.weight")),
        attn_resolutions=tuple(resolution // 2 ** i for i in range(levels) if f"encoder.down.{i}.attn.0.q.weight" in weights),
        z_channels=z_channels,
        double_z=shape("encoder.conv_out.weight")[0] == 2 * z_channels,
        embed_dim=embed_dim,
        n_embed=n_embed,
    )


def _architecture_hint(weights: dict[str, torch.Tensor], resolution: int, path: Path | str) -> str:
    try:
        c = infer_taming_config(weights, resolution, path)
    except ForeignCheckpointError as error:
        return str(error)
    return (f"The file looks like: ch={c.ch}, ch_mult={list(c.ch_mult)}, num_res_blocks={c.num_res_blocks}, "
            f"attn_resolutions={list(c.attn_resolutions)} (at {resolution} px), z_channels={c.z_channels}, "
            f"embed_dim={c.embed_dim}, n_embed={c.n_embed}; set these in params.yaml `vqgan`.")
