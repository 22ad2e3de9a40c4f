"""Typed params: one load function, one model per `params.yaml` section, clear errors.

Every stage reads its own section plus `paths` (where the chain's files live); the
same file feeds `dvc.yaml` through templating, so no path is written twice.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

DEFAULT_PARAMS = Path("params.yaml")


class Section(BaseModel):
    # Unknown keys are typos until proven otherwise.
    model_config = ConfigDict(extra="forbid", frozen=True)


class PathsParams(Section):
    raw: Path  # embedded sample in the Places365-Standard layout
    shards: Path  # WebDataset shards + manifest.json
    vqgan: Path  # tokenizer weights + config
    tokens: Path  # uint16 token arrays + meta.json
    transformer: Path  # transformer weights + config
    results: Path  # grid tables and figures
    metrics: Path  # small json/csv files that DVC reads as metrics and plots
    checkpoints: Path  # resumable training state (not a DVC out: survives a killed stage)


class SampleParams(Section):
    seed: int = 0
    image_size: int = Field(64, ge=16)
    train_per_category: int = Field(500, ge=1)
    val_per_category: int = Field(50, ge=1)
    noise: float = Field(0.02, ge=0.0, le=0.5)  # pixel noise std in [0,1] units: mild on purpose


class DataParams(Section):
    source: str = "embedded"  # "embedded" (paths.raw) or the root of a Places365-Standard copy
    image_size: int = Field(64, ge=8)  # images are resized (shorter side) and center-cropped to this
    shard_max_count: int = Field(1000, ge=1)  # images per tar shard
    min_train_shards: int = Field(2, ge=1)  # >= dataloader workers, so no worker starves
    limit_train: int | None = Field(None, ge=1)  # take the first N of the train list (None: all)
    limit_val: int | None = Field(None, ge=1)


class VQGANParams(Section):
    seed: int = 0
    ch: int = Field(32, ge=32)  # base channels; multiples of 32 (GroupNorm with 32 groups)
    ch_mult: tuple[int, ...] = (1, 1, 2)  # downsampling factor f = 2 ** (len(ch_mult) - 1)
    num_res_blocks: int = Field(1, ge=1)
    attn_resolutions: tuple[int, ...] = ()
    z_channels: int = Field(64, ge=1)
    embed_dim: int = Field(32, ge=1)  # code vector size
    n_embed: int = Field(128, ge=2, le=65535)  # codebook size K (tokens are stored as uint16)
    beta: float = 0.25  # commitment weight
    steps: int = Field(1500, ge=1)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(1e-3, gt=0)
    warmup_steps: int = Field(100, ge=0)
    dead_code_restart_every: int = Field(25, ge=0)  # 0: never re-seed unused codes
    eval_images: int = Field(256, ge=1)  # val images used for recon metrics
    checkpoint_every: int = Field(250, ge=1)
    amp: bool = True  # bf16 autocast (CPU with AVX512-BF16/AMX, or CUDA)
    num_workers: int = Field(2, ge=0)

    @model_validator(mode="after")
    def _channels(self) -> "VQGANParams":
        for m in self.ch_mult:
            if (self.ch * m) % 32:
                raise ValueError(f"ch * ch_mult must be multiples of 32 (GroupNorm), got ch={self.ch}, ch_mult={self.ch_mult}")
        return self


class TokensParams(Section):
    batch_size: int = Field(128, ge=1)
    amp: bool = True  # bf16 encoder; codes are still picked by fp32 distances


class TransformerParams(Section):
    seed: int = 0
    n_layer: int = Field(4, ge=1)
    n_head: int = Field(2, ge=1)
    n_embd: int = Field(128, ge=8)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    train_mask_schedule: str = "cosine"  # MVTM ratio gamma(r), r ~ U(0,1) ...
    fixed_mask_ratio: float | None = Field(None, gt=0.0, le=1.0)  # ... or a fixed ratio (the seed experiment's 0.3)
    label_smoothing: float = Field(0.1, ge=0.0, lt=1.0)
    steps: int = Field(2000, ge=1)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(1e-3, gt=0)
    min_lr: float = Field(1e-4, ge=0)
    warmup_steps: int = Field(100, ge=0)
    weight_decay: float = Field(0.01, ge=0)
    betas: tuple[float, float] = (0.9, 0.96)
    eval_every: int = Field(250, ge=1)
    eval_mask_ratio: float = Field(0.5, gt=0.0, le=1.0)  # val accuracy is reported at this ratio
    checkpoint_every: int = Field(250, ge=1)
    amp: bool = True

    @model_validator(mode="after")
    def _heads(self) -> "TransformerParams":
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        return self


class EvalParams(Section):
    seed: int = 0
    num_images: int = Field(200, ge=1)  # first N val images
    batch_size: int = Field(100, ge=1)
    mask: Literal["center"] = "center"
    schedules: tuple[str, ...] = ("linear", "cosine", "square")
    T: tuple[int, ...] = (4, 8, 12)
    sweet_spots: tuple[int, ...] = (1, 2, 4, 6, 8, 12)
    temperature: float = Field(4.5, ge=0.0)  # choice temperature of the Gumbel confidence noise
    feather: int = Field(2, ge=0)  # pixels of blend at the mask boundary
    sample_images: int = Field(8, ge=1)  # images in the sample strip

    @model_validator(mode="after")
    def _grid(self) -> "EvalParams":
        from maskgit_inpaint.sampling import SCHEDULES

        unknown = [s for s in self.schedules if s not in SCHEDULES]
        if unknown:
            raise ValueError(f"unknown schedules {unknown}; choose from {sorted(SCHEDULES)}")
        if min(self.T) < 1 or min(self.sweet_spots) < 1:
            raise ValueError("T and sweet_spots must be >= 1")
        return self


class Params(Section):
    paths: PathsParams
    sample: SampleParams = SampleParams()
    data: DataParams = DataParams()
    vqgan: VQGANParams = VQGANParams()
    tokens: TokensParams = TokensParams()
    transformer: TransformerParams = TransformerParams()
    eval: EvalParams = EvalParams()


class ParamsError(ValueError):
    """params.yaml is missing, unreadable or invalid; the message names file, key and fix."""


S = TypeVar("S", bound=Section)


def load(path: Path | str = DEFAULT_PARAMS) -> Params:
    """Read and validate the whole params file."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: not found. Run from the repository root, or pass the params file path.")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ParamsError(f"{path}: not valid YAML: {err}") from err
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        lines = [f"{path}: invalid params; fix these keys:"]
        for e in err.errors():
            key = ".".join(str(p) for p in e["loc"]) or "(top level)"
            lines.append(f"  {key}: {e['msg']}")
        raise ParamsError("\n".join(lines)) from err
