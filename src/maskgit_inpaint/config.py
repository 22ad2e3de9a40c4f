"""Typed params: one load function, one model per `params.yaml` section, clear errors.

`params.yaml` and the overlay of its `profile` (profiles/<name>.yaml beside it) are
the only source of values: every field is required here, so no second set of
defaults can drift from them. An overlay replaces keys of any section but `paths`;
the embedded profile's overlay is empty. Every stage reads its own section plus
`paths` (where the chain's files live); both files feed `dvc.yaml` (templating, and
each stage's params listed from both), so DVC sees an overlay's edits key by key.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

DEFAULT_PARAMS = Path("params.yaml")
PROFILES_DIR = "profiles"  # beside the params file: one overlay per profile
Precision = Literal["auto", "fp32", "bf16", "fp16"]  # runtime.PRECISIONS; runtime.choose decides what auto means here
# Names only, so that loading params imports neither torch nor the code behind them (every stage loads
# params, and an edit to a schedule must not rerun the shard stage); tests/test_config.py keeps them
# equal to the tables they name.
ScheduleName = Literal["linear", "cosine", "square", "cubic", "sqrt", "log", "exp"]  # schedules.SCHEDULES
MaskKind = Literal["center", "thin", "medium", "thick", "outpaint", "random_tokens"]  # masks.KINDS


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
    masks: Path  # the evaluation holes of every mask kind (PNG per val image) + masks.json
    pretrained: Path  # downloaded foreign checkpoints (taming VQGAN) that a stage starts from
    cache: Path  # recomputable derived data, e.g. FID statistics of the real val images (not a DVC out)
    mlflow_model: Path  # the trained pair as one MLflow pyfunc model, what `mlflow models serve` serves (register_model)


class SampleParams(Section):
    seed: int
    image_size: int = Field(..., ge=16)
    train_per_category: int = Field(..., ge=1)
    val_per_category: int = Field(..., ge=1)
    noise: float = Field(..., ge=0.0, le=0.5)  # pixel noise std in [0,1] units: mild on purpose


class DataParams(Section):
    source: str  # "embedded" (paths.raw), the folder of the Places365 downloads or a copy, a .tar, or any folder of images
    seed: int  # picks the max_train / max_val subsets and the val images of a plain image folder
    folder_val_fraction: float = Field(..., gt=0.0, lt=1.0)  # share of a plain image folder held out for val
    image_size: int = Field(..., ge=8)  # images are resized (shorter side) and center-cropped to this
    min_side: int = Field(..., ge=1)  # images with a shorter side below this are rejected, not blown up
    jpeg_quality: int | None = Field(..., ge=1, le=100)  # re-encoded images: JPEG quality, None: lossless PNG
    shard_max_count: int = Field(..., ge=1)  # images per tar shard
    min_train_shards: int = Field(..., ge=1)  # >= dataloader workers, so no worker starves
    max_train: int | None = Field(..., ge=1)  # a seeded random subset of this many train images (None: all)
    max_val: int | None = Field(..., ge=1)
    workers: int = Field(..., ge=0)  # processes that decode and resize (0: in the stage's own process)


TOKENIZER_PARTS = ("encoder", "codebook", "decoder")  # encoder includes quant_conv, decoder post_quant_conv


class VQGANParams(Section):
    seed: int
    init: str | None  # taming-transformers checkpoint in paths.pretrained (or an absolute path); None: train from scratch
    ch: int = Field(..., ge=32)  # base channels; multiples of 32 (GroupNorm with 32 groups)
    ch_mult: tuple[int, ...]  # downsampling factor f = 2 ** (len(ch_mult) - 1)
    num_res_blocks: int = Field(..., ge=1)
    attn_resolutions: tuple[int, ...]
    z_channels: int = Field(..., ge=1)
    embed_dim: int = Field(..., ge=1)  # code vector size
    n_embed: int = Field(..., ge=2, le=65535)  # codebook size K (tokens are stored as uint16)
    beta: float  # commitment weight
    train_parts: tuple[Literal["encoder", "codebook", "decoder"], ...] = Field(..., min_length=1)  # the rest stays frozen
    perceptual_weight: float = Field(..., ge=0)  # LPIPS reconstruction term (0: L1 only)
    perceptual_trunk: Literal["alex", "vgg"]  # LPIPS trunk of the loss (taming: vgg); the LPIPS metric always uses alex
    disc_weight: float = Field(..., ge=0)  # scale of the adaptive PatchGAN weight (0: no adversarial loss)
    disc_start: int = Field(..., ge=0)  # step from which the adversarial terms count
    disc_layers: int = Field(..., ge=1)  # strided conv blocks of the PatchGAN discriminator
    disc_ch: int = Field(..., ge=1)  # channels of its first conv
    steps: int = Field(..., ge=1)  # optimizer steps
    batch_size: int = Field(..., ge=1)  # images per forward pass
    grad_accum_steps: int = Field(..., ge=1)  # forward passes per optimizer step (effective batch = batch_size * this)
    lr: float = Field(..., gt=0)
    warmup_steps: int = Field(..., ge=0)
    dead_code_restart_every: int = Field(..., ge=0)  # re-seed codes unused for this many steps (0: never)
    eval_every: int = Field(..., ge=1)  # val recon metrics and an MLflow reconstruction strip
    eval_images: int = Field(..., ge=1)  # val images used for recon metrics
    checkpoint_every: int = Field(..., ge=1)
    precision: Precision  # auto: bf16 where the device has it natively, else fp32 (CPU) or fp16 (older GPUs); runtime.py
    num_workers: int = Field(..., ge=0)
    download_weights: bool  # may the LPIPS trunk (loss and metric) be fetched into the torch hub cache?

    @property
    def downsample(self) -> int:
        """f: each level of ch_mult after the first halves the resolution."""
        return 2 ** (len(self.ch_mult) - 1)

    @model_validator(mode="after")
    def _consistent(self) -> "VQGANParams":
        for m in self.ch_mult:
            if (self.ch * m) % 32:
                raise ValueError(f"ch * ch_mult must be multiples of 32 (GroupNorm), got ch={self.ch}, ch_mult={self.ch_mult}")
        if self.init is None and set(self.train_parts) != set(TOKENIZER_PARTS):
            raise ValueError(f"training from scratch (init: null) needs train_parts: {list(TOKENIZER_PARTS)}; "
                             "freezing parts only makes sense for a pretrained init")
        if self.disc_weight > 0 and "decoder" not in self.train_parts:
            raise ValueError("disc_weight > 0 needs the decoder in train_parts (the adaptive weight is taken at its last layer)")
        if self.dead_code_restart_every and "codebook" not in self.train_parts:
            raise ValueError("dead_code_restart_every > 0 re-seeds the codebook: add codebook to train_parts or set it to 0")
        return self


class TokensParams(Section):
    batch_size: int = Field(..., ge=1)
    precision: Precision  # of the encoder; codes are still picked by fp32 distances


class TransformerParams(Section):
    seed: int
    n_layer: int = Field(..., ge=1)
    n_head: int = Field(..., ge=1)
    n_embd: int = Field(..., ge=8)
    mlp_ratio: int = Field(..., ge=1)  # MLP hidden width / n_embd
    dropout: float = Field(..., ge=0.0, lt=1.0)
    local_mixing: bool  # depthwise 3x3 conv over the token grid before each block
    train_mask_schedule: ScheduleName  # MVTM ratio gamma(r), r ~ U(0,1) ...
    fixed_mask_ratio: float | None = Field(..., gt=0.0, le=1.0)  # ... or a fixed ratio (the seed experiment's 0.3)
    label_smoothing: float = Field(..., ge=0.0, lt=1.0)
    steps: int = Field(..., ge=1)
    batch_size: int = Field(..., ge=1)
    lr: float = Field(..., gt=0)
    min_lr: float = Field(..., ge=0)
    warmup_steps: int = Field(..., ge=0)
    weight_decay: float = Field(..., ge=0)
    betas: tuple[float, float]
    eval_every: int = Field(..., ge=1)
    eval_mask_ratios: tuple[float, ...] = Field(..., min_length=1)  # val accuracy/NLL at each; val_accuracy is their mean
    checkpoint_every: int = Field(..., ge=1)
    precision: Precision
    compile: bool  # torch.compile the training step (CUDA; minutes of compile time on a CPU)

    @model_validator(mode="after")
    def _heads(self) -> "TransformerParams":
        if not all(0 < r <= 1 for r in self.eval_mask_ratios):
            raise ValueError(f"eval_mask_ratios must lie in (0, 1], got {list(self.eval_mask_ratios)}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        return self


class EvalParams(Section):
    seed: int
    num_images: int = Field(..., ge=1)  # first N val images
    batch_size: int = Field(..., ge=1)
    masks: tuple[MaskKind, ...] = Field(..., min_length=1)  # hole kinds, one grid each
    schedules: tuple[ScheduleName, ...] = Field(..., min_length=1)  # mask schedules gamma to decode with
    T: tuple[int, ...] = Field(..., min_length=1)  # total decoding steps, one trajectory each per schedule
    sweet_spots: tuple[int, ...] = Field(..., min_length=1)  # stop at step k of T (k <= T; k = T is always added)
    temperature: float = Field(..., ge=0.0)  # choice temperature of the Gumbel confidence noise
    token_temperature: tuple[float, ...] = Field(..., min_length=1)  # softmax temperature of the token draw, a grid axis (1.0: MaskGIT)
    start_step: int = Field(..., ge=0)  # schedule step decoding starts at (MaskGIT's editing path: 2 of 12); 0: the first
    token_dilation: int = Field(..., ge=0)  # grow the token mask by this many latent cells (MaskGIT's editing path: 1)
    random_token_ratio: float = Field(..., gt=0.0, lt=1.0)  # share of tokens the random_tokens mask kind hides
    feather: int = Field(..., ge=0)  # pixels of blend at the mask boundary
    sample_images: int = Field(..., ge=1)  # images in the sample strip
    download_weights: bool  # may LPIPS / FID fetch their pretrained backbones into the torch hub cache?
    fid: bool  # FID column (Inception at 299 px: ~0.5 s per image on a laptop CPU, so off in the embedded profile)
    precision: Precision  # of decoding and pixel decodes (metrics are computed in fp32)
    replicates: int = Field(..., ge=1)  # Gumbel streams per trajectory, same masks; the table averages them
    bootstrap_resamples: int = Field(..., ge=20)  # resamples of the images behind every interval and comparison
    confidence: float = Field(..., gt=0.5, lt=1.0)  # of the intervals; 1 - confidence is each test family's level
    selection_fraction: float = Field(..., gt=0.0, lt=1.0)  # of the images where the best cell is chosen (the rest report it)
    runner: Literal["threads", "dask"]  # where trajectories run: this process (threads) or a Dask cluster through prefect-dask
    dask_address: str  # runner dask: "" = a local cluster of dask_workers processes, else an existing scheduler's address
    dask_workers: int = Field(..., ge=1)  # processes of the local cluster; each loads the models once

    @model_validator(mode="after")
    def _grid(self) -> "EvalParams":
        if min(self.T) < 1 or min(self.sweet_spots) < 1:
            raise ValueError("T and sweet_spots must be >= 1")
        if min(self.token_temperature) <= 0:
            raise ValueError(f"token_temperature values must be > 0, got {list(self.token_temperature)}")
        if self.start_step >= min(self.T):
            raise ValueError(f"start_step ({self.start_step}) must be below every T (smallest: {min(self.T)})")
        if self.num_images < 4:
            raise ValueError(f"num_images ({self.num_images}) must be at least 4: the held-out pick splits them in two")
        if self.sample_images > min(self.batch_size, self.num_images):
            raise ValueError(f"sample_images ({self.sample_images}) must not exceed batch_size and num_images")
        return self


class RegistryParams(Section):
    name: str = Field(..., min_length=1)  # the MLflow registry name the served model gets a version under (models:/<name>/latest)


class Params(Section):
    profile: str  # the overlay applied (profiles/<profile>.yaml); logged with every run and metrics file
    paths: PathsParams
    sample: SampleParams
    data: DataParams
    vqgan: VQGANParams
    tokens: TokensParams
    transformer: TransformerParams
    eval: EvalParams
    registry: RegistryParams


class ParamsError(ValueError):
    """params.yaml is missing, unreadable or invalid; the message names file, key and fix."""


def profile_file(params_file: Path, profile: str) -> Path:
    return params_file.parent / PROFILES_DIR / f"{profile}.yaml"


def profile_names(params_file: Path | str = DEFAULT_PARAMS) -> list[str]:
    return sorted(f.stem for f in (Path(params_file).parent / PROFILES_DIR).glob("*.yaml"))


def _read_yaml(path: Path) -> dict:
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ParamsError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping of sections, got {type(raw).__name__}")
    return raw


def _apply_profile(path: Path, raw: dict) -> tuple[dict, str]:
    """params.yaml's values with its profile's overlay applied, and a label naming both files for errors."""
    profile = raw.get("profile")
    if not isinstance(profile, str) or not profile:
        raise ParamsError(f"{path}: needs a top-level `profile:` naming an overlay in {path.parent / PROFILES_DIR}/ "
                          f"(one of {profile_names(path)}; the default is embedded)")
    overlay_file = profile_file(path, profile)
    if not overlay_file.is_file():
        raise ParamsError(f"{path}: profile {profile!r} has no overlay {overlay_file}; choose one of {profile_names(path)}")
    overlay = _read_yaml(overlay_file)
    sections = set(Params.model_fields) - {"profile", "paths"}
    if unknown := sorted(set(overlay) - sections):
        raise ParamsError(f"{overlay_file}: unknown or fixed section {unknown[0]!r}; an overlay may set {sorted(sections)}")
    if missing := sorted(sections - set(overlay)):
        raise ParamsError(f"{overlay_file}: lacks section(s) {missing}; write e.g. `{missing[0]}: {{}}` where the profile "
                          "changes nothing (dvc.yaml reads every section of the overlay)")
    for section, values in overlay.items():
        if not isinstance(values, dict):
            raise ParamsError(f"{overlay_file}: section {section!r} must be a mapping of keys (or {{}})")
        raw[section] = {**(raw.get(section) or {}), **values}
    return raw, f"{path} + {overlay_file}"


def load(path: Path | str = DEFAULT_PARAMS) -> Params:
    """Read the params file, apply its profile's overlay, validate the whole."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: not found. Run from the repository root, or pass the params file path.")
    raw, source = _apply_profile(path, _read_yaml(path))
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        lines = [f"{source}: invalid params; fix these keys:"]
        for e in err.errors():
            key = ".".join(str(p) for p in e["loc"]) or "(top level)"
            got = f" (got {e['input']!r})" if e["type"] == "literal_error" else ""
            lines.append(f"  {key}: {e['msg']}{got}")
        raise ParamsError("\n".join(lines)) from err
