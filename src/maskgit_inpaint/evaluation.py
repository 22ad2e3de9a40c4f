"""The evaluation grid: decode trajectories, composite, score, tabulate.

One trajectory per (mask, schedule, token temperature, T) yields every sweet spot
k <= T (sampling.decode). The val images are tokenized once (the extract_tokens
stage); every cell of a mask kind sees the same holes and the same Gumbel noise
stream, re-seeded per batch, so step 1 of every trajectory of one token temperature
is the same decode (when decoding starts at the first schedule step): the k = 1
cell of each (schedule, T) is decoded and scored once per (mask kind, token
temperature), the T = 1 trajectory, and shared (with_first_step). Replicates decode
the same holes under other Gumbel streams.

Every cell keeps its `Evidence`: per-image values, and the set-level metrics on
the held-out halves and under the shared bootstrap resamples (stats.py), so the
grid's intervals and comparisons (grid_stats.py) need no decoding again. A cell
also keeps its `ScoredOn` (how many images, which metrics had no backbone, the
precision) and a trajectory its `SampleStrip`, so a report of cached cells loads
no model, image or backbone.
"""
from __future__ import annotations

import hashlib
import math
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch

from maskgit_inpaint import imports, masks, metrics, perceptual, runtime, sampling, stats, swd
from maskgit_inpaint.data import eval_masks, shards
from maskgit_inpaint.data import tokens as token_store
from maskgit_inpaint.io import sha256_file
from maskgit_inpaint.models.checkpoint import WEIGHTS
from maskgit_inpaint.models.transformer import MaskedTokenTransformer
from maskgit_inpaint.models.vqgan import VQGAN

COLUMNS = ["method", "mask", "schedule", "token_temperature", "T", "sweet_spot", "n_images", "replicates",
           "psnr", "psnr_masked", "ssim", "ssim_masked", "swd", "swd_masked", "lpips", "lpips_masked", "fid", "seconds_per_image", "status"]
QUALITY = ["psnr", "psnr_masked", "ssim", "ssim_masked"]  # per-image means
REALISM = ["swd", "swd_masked"]  # set-level: generated vs real patch distributions
PERCEPTUAL = ["lpips", "lpips_masked", "fid"]  # need pretrained backbones: NaN where unavailable
METRICS = QUALITY + REALISM + PERCEPTUAL + ["seconds_per_image"]
PER_IMAGE = QUALITY + ["lpips", "lpips_masked"]  # kept image by image in every cell's Evidence
HELD_OUT = ("psnr_masked", "ssim_masked", "lpips_masked", "swd_masked")  # picked on one half, reported on the other


@dataclass(frozen=True)
class GridSpec:
    """Everything a grid cell depends on besides its own axes; hashable, so Prefect caches cells by it."""

    vqgan_dir: str
    transformer_dir: str
    shards_dir: str
    tokens_dir: str
    masks_dir: str  # the evaluation holes (stage eval_masks)
    cache_dir: str  # FID statistics of the real val images
    fingerprint: str  # hash of both models' weights, the val tokens, the holes and the grid code
    num_images: int
    batch_size: int
    seed: int  # Gumbel noise, SWD patch positions, the held-out split and the bootstrap resamples (the holes: eval_masks)
    replicates: int  # Gumbel streams per trajectory (same masks)
    bootstrap_resamples: int
    selection_fraction: float  # of the images, where the best cell is chosen
    temperature: float  # choice temperature (the token temperature is a trajectory axis)
    start_step: int  # schedule step decoding starts at (sampling.decode)
    token_dilation: int  # latent cells the token mask grows by before decoding (the pixel mask stays)
    feather: int
    sample_images: int
    download_weights: bool
    fid: bool
    precision: str  # decided for this machine (runtime.choose), so a cached cell never crosses precisions


def fingerprint(vqgan_dir: Path, transformer_dir: Path, tokens_dir: Path, masks_dir: Path) -> str:
    """Both models' weights, the val tokens, the holes (masks.json holds their digests) and every file the grid's cells run."""
    parts = [sha256_file(Path(vqgan_dir) / WEIGHTS), sha256_file(Path(transformer_dir) / WEIGHTS), sha256_file(Path(tokens_dir) / "val.npy"),
             sha256_file(Path(masks_dir) / eval_masks.META)]
    parts.append(imports.code_digest(__name__, [Path(__file__).resolve().parents[1]]))
    return hashlib.sha256("".join(parts).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Batch:
    """One batch of the val set with the holes of one mask kind, on the device."""

    start: int  # index of its first image
    images: torch.Tensor  # (B, 3, H, W) in [-1, 1]
    pixel_mask: torch.Tensor  # (B, 1, H, W), True = missing
    token_mask: torch.Tensor  # (B, h*w), True = masked
    tokens: torch.Tensor  # (B, h*w) the images' own token ids


@dataclass(frozen=True)
class ScoredOn:
    """What a finished cell was scored on; it travels with the cell through the cache, so a report loads nothing."""

    images: int  # val images scored
    unavailable: dict[str, str]  # metric column -> why it has no values (its pretrained backbone is missing)
    precision: runtime.Precision  # of decoding and pixel decodes


@dataclass
class EvalData:
    vqgan: VQGAN
    transformer: MaskedTokenTransformer
    images: torch.Tensor  # (N, 3, H, W) in [-1, 1], val images in shard order
    keys: list[str]  # their sample keys
    tokens: torch.Tensor  # (N, h*w) their token ids
    masks_dir: Path  # their holes, one PNG per image and mask kind (data/eval_masks.py)
    device: torch.device
    precision: runtime.Precision  # of decoding and pixel decodes
    lpips: perceptual.Backbone
    fid: perceptual.Backbone
    real_moments: tuple[np.ndarray, np.ndarray] | None  # FID statistics of `images`, when FID is available
    holes: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)

    def masks(self, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(pixel mask (N, 1, H, W), token mask (N, h*w)) of one mask kind, True = missing, as the eval_masks stage wrote them."""
        if kind not in self.holes:
            pixel = eval_masks.load(self.masks_dir, kind, self.keys)
            self.holes[kind] = pixel, masks.to_token_mask(pixel, self.vqgan.config.downsample)
        return self.holes[kind]

    def batches(self, kind: str, *, batch_size: int) -> Iterator[Batch]:
        """The val set in order, `batch_size` images at a time, with the holes of mask kind `kind`."""
        pixel_mask, token_mask = self.masks(kind)
        for start in range(0, len(self.images), batch_size):
            rows = slice(start, start + batch_size)
            yield Batch(start, *(t[rows].to(self.device) for t in (self.images, pixel_mask, token_mask, self.tokens)))

    def scored_on(self) -> ScoredOn:
        """What a cell scored on these data carries with it."""
        reasons = {}
        for backbone, columns in ((self.lpips, ("lpips", "lpips_masked")), (self.fid, ("fid",))):
            if not backbone.available:
                reasons.update(dict.fromkeys(columns, backbone.reason))
        return ScoredOn(len(self.images), reasons, self.precision)


_loaded: dict[GridSpec, EvalData] = {}
_lock = threading.Lock()


def load_data(spec: GridSpec) -> EvalData:
    """Models, val images, tokens and metric backbones, loaded once per process and spec."""
    with _lock:
        if spec not in _loaded:
            dev = runtime.setup(spec.seed)
            vqgan = VQGAN.load(spec.vqgan_dir, dev)
            transformer = MaskedTokenTransformer.load(spec.transformer_dir, dev)
            meta = token_store.load_meta(spec.tokens_dir)
            images, keys = shards.load_split(shards.shard_urls(spec.shards_dir, "val"), spec.num_images)
            if keys != meta.val_keys[: len(keys)]:
                raise ValueError(f"{spec.tokens_dir}: val tokens do not match the val shards; run `dvc repro extract_tokens`")
            tokens = torch.from_numpy(token_store.load(spec.tokens_dir, "val")[: len(keys)].astype(np.int64))
            lpips_net = perceptual.resolve_lpips(dev, spec.download_weights)
            fid_net = perceptual.resolve_fid(dev, spec.download_weights) if spec.fid else perceptual.Backbone(None, "off in params (eval.fid: false)")
            real = None
            if fid_net.available:
                key = hashlib.sha256(images.numpy().tobytes()).hexdigest()[:16]  # the val images themselves
                batches = (images[i:i + spec.batch_size].to(dev) for i in range(0, len(images), spec.batch_size))
                cache_file = Path(spec.cache_dir) / f"fid_real_{Path(perceptual.INCEPTION_FILE).stem}_{key}.npz"
                real = perceptual.real_moments(fid_net.network, batches, cache_file)
            _loaded.clear()  # one spec at a time: a new spec means new models
            prec = runtime.precision(spec.precision, dev)
            _loaded[spec] = EvalData(vqgan, transformer, images, keys, tokens, Path(spec.masks_dir), dev, prec, lpips_net, fid_net, real)
        return _loaded[spec]


def composite(original: torch.Tensor, generated: torch.Tensor, pixel_mask: torch.Tensor, feather: int) -> torch.Tensor:
    """Known pixels from the input, missing ones from the decode, blended over `feather` pixels."""
    weight = masks.feather(pixel_mask, feather).to(original.device)  # (B, 1, H, W)
    return weight * generated + (1 - weight) * original


def decode_pixels(vqgan: VQGAN, ids: torch.Tensor, precision: runtime.Precision) -> torch.Tensor:
    """(B, h*w) token ids of square images -> (B, 3, H, W) fp32 images in [-1, 1], under `precision`, in cache-sized chunks."""
    grid = math.isqrt(ids.shape[1])
    size = grid * vqgan.config.downsample
    decode = runtime.in_cache_chunks(vqgan.decode_indices, precision.device, vqgan.config.decode_activation_bytes(size))
    with precision.autocast():
        return decode(ids.view(len(ids), grid, grid)).float()


@dataclass
class SetLevel:
    """A set-level metric (one number per image set) of one cell, on the images and their resamples."""

    value: float  # on all images
    replicates: np.ndarray | None  # (resamples,) under the shared bootstrap resamples of all images; None: not computed
    selection: float = float("nan")  # on the selection half (held-out metrics only)
    report: float = float("nan")  # on the report half
    report_replicates: np.ndarray | None = None  # (resamples,) under the resamples of the report half
    per_replicate: tuple[float, ...] = ()  # the value under each Gumbel stream (replicates > 1), averaged into `value`


@dataclass
class Evidence:
    """What a cell's statistics are computed from, so none needs decoding again."""

    per_image: dict[str, np.ndarray]  # metric -> (replicates, N) values, NaN where a metric is unavailable
    set_level: dict[str, SetLevel]  # swd, swd_masked, fid
    by_area: dict[str, dict[str, float]] = field(default_factory=dict)  # hole-area bucket -> swd, swd_masked on its images

    @staticmethod
    def mean(parts: list[Evidence]) -> Evidence:
        """Replicates of one cell: per-image values stacked, set-level values and replicates averaged."""
        per_image = {m: np.concatenate([p.per_image[m] for p in parts]) for m in parts[0].per_image}

        def avg(values):
            return None if values[0] is None else np.mean(values, axis=0)

        set_level = {m: SetLevel(*(avg([getattr(p.set_level[m], f) for p in parts])
                                   for f in ("value", "replicates", "selection", "report", "report_replicates")),
                                 per_replicate=tuple(p.set_level[m].value for p in parts) if len(parts) > 1 else ())
                     for m in parts[0].set_level}
        for level in set_level.values():
            level.value, level.selection, level.report = float(level.value), float(level.selection), float(level.report)
        by_area = {bucket: {m: float(np.mean([p.by_area[bucket][m] for p in parts])) for m in values}
                   for bucket, values in parts[0].by_area.items()}
        return Evidence(per_image, set_level, by_area)


class CellScores:
    """Accumulates one cell's metrics over batches: per-image fidelity, set-level realism (also per hole-area bucket)."""

    def __init__(self, data: EvalData, seed: int, buckets: np.ndarray):
        self.data = data
        self.buckets = buckets  # (N,) each image's hole-area bucket
        self.per_image: dict[str, list[torch.Tensor]] = {m: [] for m in PER_IMAGE}
        # Same seed in every cell: patches come from the same positions, so cells compare like for like.
        self.whole, self.masked = swd.PatchSets(seed=seed), swd.PatchSets(seed=seed)
        self.features = perceptual.FeatureStats()

    def add(self, pred: torch.Tensor, target: torch.Tensor, pixel_mask: torch.Tensor) -> None:
        nan = torch.full((len(pred),), float("nan"))
        values = {
            "psnr": metrics.psnr(pred, target), "psnr_masked": metrics.psnr(pred, target, pixel_mask),
            "ssim": metrics.ssim(pred, target), "ssim_masked": metrics.ssim(pred, target, pixel_mask),
            "lpips": nan, "lpips_masked": nan,
        }
        if self.data.lpips.available:
            dist = perceptual.lpips_map(self.data.lpips.network, pred, target)  # one pass serves both columns
            values["lpips"], values["lpips_masked"] = perceptual.map_mean(dist), perceptual.map_mean(dist, pixel_mask)
        if self.data.fid.available:
            self.features.add(self.data.fid.network, pred)
        for m, v in values.items():
            self.per_image[m].append(v.float().cpu())
        self.whole.add(pred, target)
        self.masked.add(pred, target, pixel_mask)

    def evidence(self, resampling: Resampling) -> Evidence:
        """Per-image values, and SWD on the halves and under the resamples (FID: its value only)."""
        whole, = self.whole.resample([(resampling.all, None)])
        report = torch.from_numpy(resampling.split.report)
        masked, masked_report = self.masked.resample([(resampling.all, None), (resampling.report, report)])
        # FID per bucket would need the real images' features per image; their statistics are cached as moments only.
        by_area = {bucket: {"swd": self.whole.distance(subset), "swd_masked": self.masked.distance(subset)}
                   for bucket in np.unique(self.buckets) for subset in [torch.from_numpy(np.flatnonzero(self.buckets == bucket))]}
        fid = float("nan")
        if self.data.real_moments is not None and len(self.features) >= 2:  # a covariance needs two images
            fid = perceptual.frechet_distance(*self.features.moments(), *self.data.real_moments)
        return Evidence(
            per_image={m: torch.cat(v).numpy()[None] for m, v in self.per_image.items()},
            set_level={
                "swd": SetLevel(self.whole.distance(), whole.numpy()),
                "swd_masked": SetLevel(self.masked.distance(), masked.numpy(),
                                       selection=self.masked.distance(torch.from_numpy(resampling.split.selection)),
                                       report=self.masked.distance(report), report_replicates=masked_report.numpy()),
                "fid": SetLevel(fid, None),  # a resampled FID needs a 2048-d matrix root per resample: not computed
            },
            by_area=by_area)


@dataclass(frozen=True)
class Resampling:
    """The held-out split and the bootstrap resamples every cell of a grid shares."""

    split: stats.Split
    all: torch.Tensor  # (resamples, N) counts over all images
    report: torch.Tensor  # (resamples, N) counts over the report half

    @staticmethod
    def of(spec: GridSpec, n: int) -> Resampling:
        halves = stats.split(n, spec.selection_fraction, spec.seed)
        return Resampling(halves, stats.resample_counts(n, None, resamples=spec.bootstrap_resamples, seed=spec.seed),
                          stats.resample_counts(n, halves.report, resamples=spec.bootstrap_resamples, seed=spec.seed))


@dataclass
class Cell:
    """One row of the grid, what its statistics are computed from and what it was scored on (None for a failed cell)."""

    row: dict
    evidence: Evidence | None
    scored_on: ScoredOn | None = None


def _cell(method: str, mask: str, *, evidence: Evidence, seconds: float, scored_on: ScoredOn, schedule: str | None = None,
          token_temperature: float | None = None, T: int | None = None, sweet_spot: int | None = None) -> Cell:
    n = scored_on.images
    row = {"method": method, "mask": mask, "schedule": schedule, "token_temperature": token_temperature, "T": T, "sweet_spot": sweet_spot,
           "n_images": n, "replicates": len(next(iter(evidence.per_image.values())))}
    row.update({m: float(np.nanmean(v)) if np.isfinite(v).any() else float("nan") for m, v in evidence.per_image.items()})
    row.update({m: level.value for m, level in evidence.set_level.items()})
    finite = all(np.isfinite(row[k]) for k in QUALITY + REALISM)
    return Cell({**row, "seconds_per_image": seconds / (n * row["replicates"]), "status": "ok" if finite else "non-finite metric"},
                evidence, scored_on)


def _failure(error: BaseException) -> str:
    return f"failed: {type(error).__name__}: {error}"[:300]


def failed_cells(mask: str, schedule: str, token_temperature: float, T: int, sweet_spots: tuple[int, ...],
                 error: BaseException) -> list[Cell]:
    """The cells of a trajectory that failed after its retries: no metrics, the error in `status`."""
    return [Cell({"method": "maskgit", "mask": mask, "schedule": schedule, "token_temperature": token_temperature, "T": T,
                  "sweet_spot": k, "status": _failure(error)}, None)
            for k in sorted(set(sweet_spots) | {T})]


def failed_baseline(method: str, mask: str, error: BaseException) -> Cell:
    """A baseline that failed after its retries: a row that says so, and the grid goes on."""
    return Cell({"method": method, "mask": mask, "status": _failure(error)}, None)


@dataclass
class SampleStrip:
    """The first images of a trajectory as uint8 (S, H, W, 3): what its sample strip shows."""

    masked_input: np.ndarray  # the hole greyed
    mask: np.ndarray
    original: np.ndarray
    steps: dict[int, np.ndarray] = field(default_factory=dict)  # sweet spot -> completed images

    @staticmethod
    def of(batch: Batch, count: int) -> SampleStrip:
        x, pm = batch.images[:count], batch.pixel_mask[:count]
        return SampleStrip(shards.as_uint8(torch.where(pm, torch.zeros_like(x), x)), shards.as_uint8(pm.float().expand_as(x) * 2 - 1),
                           shards.as_uint8(x))


@dataclass
class Trajectory:
    cells: list[Cell]  # one per sweet spot
    samples: SampleStrip


def sampling_seed(seed: int, replicate: int, start: int) -> int:
    """The Gumbel stream of one batch: the same in every trajectory (step 1 is shared), another per replicate."""
    return seed * 1_000_003 + start + replicate * 7_919_000_011


def run_trajectory(spec: GridSpec, mask: str, schedule: str, T: int, sweet_spots: tuple[int, ...],
                   token_temperature: float) -> Trajectory:
    """Decode all images with (schedule, T, token temperature) for holes of kind `mask`, once per replicate; score every sweet spot."""
    data = load_data(spec)
    logits = runtime.in_cache_chunks(data.transformer, data.device, data.transformer.config.activation_bytes)
    ks = sorted(set(sweet_spots) | {T})
    buckets = eval_masks.area_buckets(data.masks_dir, mask, len(data.images))  # (N,) each image's hole-area bucket
    resampling = Resampling.of(spec, len(data.images))
    evidence: dict[int, list[Evidence]] = {k: [] for k in ks}
    pixel_seconds = dict.fromkeys(ks, 0.0)
    decode_seconds = 0.0
    for replicate in range(spec.replicates):
        scores = {k: CellScores(data, spec.seed, buckets) for k in ks}
        for batch in data.batches(mask, batch_size=spec.batch_size):
            shown = batch.start == 0 and replicate == 0  # the sample strip's images
            if shown:
                samples = SampleStrip.of(batch, spec.sample_images)
            began = runtime.clock(data.device)
            generator = torch.Generator(data.device).manual_seed(sampling_seed(spec.seed, replicate, batch.start))
            token_mask = masks.dilate_token_mask(batch.token_mask, spec.token_dilation)  # (B, h*w)
            with data.precision.autocast():
                out = sampling.decode(logits, batch.tokens, token_mask, schedule=schedule, T=T, sweet_spots=ks,
                                      temperature=spec.temperature, token_temperature=token_temperature,
                                      start_step=spec.start_step, generator=generator, mask_id=data.transformer.config.mask_id)
            decode_seconds += runtime.clock(data.device) - began
            for k, ids in out.items():
                began = runtime.clock(data.device)
                pred = composite(batch.images, decode_pixels(data.vqgan, ids, data.precision), batch.pixel_mask, feather=spec.feather)
                pixel_seconds[k] += runtime.clock(data.device) - began
                scores[k].add(pred, batch.images, batch.pixel_mask)
                if shown:
                    samples.steps[k] = shards.as_uint8(pred[: spec.sample_images])
        for k in ks:
            evidence[k].append(scores[k].evidence(resampling))
    # A cell's cost: k of the T transformer passes (measured together) plus its pixel decode.
    cells = [
        _cell("maskgit", mask, evidence=Evidence.mean(evidence[k]), seconds=decode_seconds * k / T + pixel_seconds[k],
              scored_on=data.scored_on(), schedule=schedule, token_temperature=token_temperature, T=T, sweet_spot=k)
        for k in ks
    ]
    return Trajectory(cells, samples)


def with_first_step(first: Trajectory, rest: Trajectory | None, schedule: str, T: int) -> Trajectory:
    """The whole trajectory of (schedule, T): its k = 1 cell is the shared first step, the rest decoded.

    `first` is the T = 1 trajectory of the same mask kind and token temperature (any
    schedule: one step never reads it); `rest` holds the sweet spots k > 1 (None for T = 1).
    Only valid when decoding starts at the first schedule step (start_step 0).
    """
    shared = replace(first.cells[0], row={**first.cells[0].row, "schedule": schedule, "T": T})
    steps = {**first.samples.steps, **(rest.samples.steps if rest else {})}
    return Trajectory([shared] + (rest.cells if rest else []), replace(first.samples, steps=steps))


def _baseline(spec: GridSpec, mask: str, method: str, fill: Callable[[EvalData, Batch], torch.Tensor]) -> Cell:
    """Score a baseline over the val set; fill(data, batch) -> the batch's completed images."""
    data = load_data(spec)
    scores = CellScores(data, spec.seed, eval_masks.area_buckets(data.masks_dir, mask, len(data.images)))
    seconds = 0.0
    for batch in data.batches(mask, batch_size=spec.batch_size):
        began = runtime.clock(data.device)
        pred = fill(data, batch)
        seconds += runtime.clock(data.device) - began
        scores.add(pred, batch.images, batch.pixel_mask)
    return _cell(method, mask, evidence=scores.evidence(Resampling.of(spec, len(data.images))), seconds=seconds,
                 scored_on=data.scored_on())


def vq_ceiling(spec: GridSpec, mask: str) -> Cell:
    """The ceiling of any token predictor: decode the true tokens of every image, composite the same way."""
    return _baseline(spec, mask, "vq_ceiling", lambda data, batch: composite(
        batch.images, decode_pixels(data.vqgan, batch.tokens, data.precision), batch.pixel_mask, feather=spec.feather))


def telea_fill(images: torch.Tensor, pixel_mask: torch.Tensor, radius: int = 3) -> torch.Tensor:
    """Classical inpainting (OpenCV Telea) of (B, 3, H, W) images in [-1, 1]; known pixels are kept."""
    filled = [
        cv2.inpaint(np.ascontiguousarray(img), hole[0].astype(np.uint8) * 255, radius, cv2.INPAINT_TELEA)
        for img, hole in zip(shards.as_uint8(images), pixel_mask.cpu().numpy())  # OpenCV has no batched call
    ]
    return torch.from_numpy(np.stack(filled)).permute(0, 3, 1, 2).float().to(images.device) / 127.5 - 1


def telea(spec: GridSpec, mask: str) -> Cell:
    """A baseline without any learning: OpenCV's Telea inpainting of the same holes."""
    return _baseline(spec, mask, "telea", lambda data, batch: telea_fill(batch.images, batch.pixel_mask))


def table(rows: list[dict], columns: list[str] = COLUMNS) -> pd.DataFrame:
    df = pd.DataFrame(rows).reindex(columns=columns)
    for col in ("T", "sweet_spot", "n_images", "replicates"):
        df[col] = df[col].astype("Int64")
    df["token_temperature"] = df["token_temperature"].astype("float64")
    return df.sort_values(["mask", "method", "schedule", "token_temperature", "T", "sweet_spot"], na_position="first", ignore_index=True)


def spec_for(paths, p) -> GridSpec:
    """The GridSpec of params `paths` (PathsParams) and `eval` (EvalParams)."""
    return GridSpec(
        vqgan_dir=str(paths.vqgan), transformer_dir=str(paths.transformer), shards_dir=str(paths.shards),
        tokens_dir=str(paths.tokens), masks_dir=str(paths.masks), cache_dir=str(paths.cache),
        fingerprint=fingerprint(paths.vqgan, paths.transformer, paths.tokens, paths.masks),
        num_images=p.num_images, batch_size=p.batch_size, seed=p.seed, replicates=p.replicates,
        bootstrap_resamples=p.bootstrap_resamples, selection_fraction=p.selection_fraction, temperature=p.temperature,
        start_step=p.start_step, token_dilation=p.token_dilation, feather=p.feather, sample_images=p.sample_images,
        download_weights=p.download_weights, fid=p.fid,
        precision=runtime.precision(p.precision, runtime.device()).name,
    )

