"""The evaluation grid: decode trajectories, composite, score, tabulate.

One trajectory per (mask, schedule, T) yields every sweet spot k <= T
(sampling.decode). The val images are tokenized once (the extract_tokens stage);
every cell of a mask kind sees the same holes and the same Gumbel noise stream,
re-seeded per batch, so step 1 of every trajectory is the same decode: the k = 1
cell of each (schedule, T) is decoded and scored once per mask kind (the T = 1
trajectory) and shared (with_first_step). Replicates decode the same holes under
other Gumbel streams.

Every cell keeps its `Evidence`: per-image values, and the set-level metrics on
the held-out halves and under the shared bootstrap resamples (stats.py), so the
grid's intervals and comparisons (grid_stats.py) need no decoding again.
"""
from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch

from maskgit_inpaint import masks, metrics, perceptual, runtime, sampling, stats, swd
from maskgit_inpaint.data import shards
from maskgit_inpaint.data import tokens as token_store
from maskgit_inpaint.io import sha256_file
from maskgit_inpaint.models.checkpoint import WEIGHTS
from maskgit_inpaint.models.transformer import MaskedTokenTransformer
from maskgit_inpaint.models.vqgan import VQGAN

COLUMNS = ["method", "mask", "schedule", "T", "sweet_spot", "n_images", "replicates", "psnr", "psnr_masked", "ssim", "ssim_masked",
           "swd", "swd_masked", "lpips", "lpips_masked", "fid", "seconds_per_image", "status"]
QUALITY = ["psnr", "psnr_masked", "ssim", "ssim_masked"]  # per-image means
REALISM = ["swd", "swd_masked"]  # set-level: generated vs real patch distributions
PERCEPTUAL = ["lpips", "lpips_masked", "fid"]  # need pretrained backbones: NaN where unavailable
METRICS = QUALITY + REALISM + PERCEPTUAL + ["seconds_per_image"]
PER_IMAGE = QUALITY + ["lpips", "lpips_masked"]  # kept image by image in every cell's Evidence
HELD_OUT = ("psnr_masked", "ssim_masked", "lpips_masked", "swd_masked")  # picked on one half, reported on the other
# Sources whose change must invalidate cached grid cells.
CODE = ("sampling.py", "evaluation.py", "metrics.py", "masks.py", "swd.py", "perceptual.py", "runtime.py", "stats.py")


@dataclass(frozen=True)
class GridSpec:
    """Everything a grid cell depends on besides its own axes; hashable, so Prefect caches cells by it."""

    vqgan_dir: str
    transformer_dir: str
    shards_dir: str
    tokens_dir: str
    cache_dir: str  # FID statistics of the real val images
    fingerprint: str  # hash of both models' weights, the val tokens and the grid code
    num_images: int
    batch_size: int
    seed: int  # masks, Gumbel noise, SWD patch positions, the held-out split and the bootstrap resamples
    replicates: int  # Gumbel streams per trajectory (same masks)
    bootstrap_resamples: int
    selection_fraction: float  # of the images, where the best cell is chosen
    temperature: float
    feather: int
    sample_images: int
    download_weights: bool
    fid: bool
    precision: str  # decided for this machine (runtime.choose), so a cached cell never crosses precisions


def fingerprint(vqgan_dir: Path, transformer_dir: Path, tokens_dir: Path) -> str:
    here = Path(__file__).parent
    parts = [sha256_file(Path(vqgan_dir) / WEIGHTS), sha256_file(Path(transformer_dir) / WEIGHTS), sha256_file(Path(tokens_dir) / "val.npy")]
    parts += [sha256_file(here / name) for name in CODE]
    return hashlib.sha256("".join(parts).encode()).hexdigest()[:16]


@dataclass
class EvalData:
    vqgan: VQGAN
    transformer: MaskedTokenTransformer
    images: torch.Tensor  # (N, 3, H, W) in [-1, 1], val images in shard order
    tokens: torch.Tensor  # (N, h*w) their token ids
    device: torch.device
    precision: runtime.Precision  # of decoding and pixel decodes
    lpips: perceptual.Backbone
    fid: perceptual.Backbone
    real_moments: tuple[np.ndarray, np.ndarray] | None  # FID statistics of `images`, when FID is available
    holes: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)

    def masks(self, kind: str, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(pixel mask (N, 1, H, W), token mask (N, h*w)) of one mask kind, True = missing."""
        if kind not in self.holes:
            pixel = masks.make(kind, len(self.images), self.images.shape[-1], seed)
            self.holes[kind] = pixel, masks.to_token_mask(pixel, self.vqgan.config.downsample)
        return self.holes[kind]


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
            _loaded[spec] = EvalData(vqgan, transformer, images, tokens, dev, prec, lpips_net, fid_net, real)
        return _loaded[spec]


def composite(original: torch.Tensor, generated: torch.Tensor, pixel_mask: torch.Tensor, feather: int) -> torch.Tensor:
    """Known pixels from the input, missing ones from the decode, blended over `feather` pixels."""
    weight = masks.feather(pixel_mask, feather).to(original.device)  # (B, 1, H, W)
    return weight * generated + (1 - weight) * original


def _decode_pixels(data: EvalData, ids: torch.Tensor) -> torch.Tensor:
    """(B, h*w) token ids -> (B, 3, H, W) images."""
    size = data.images.shape[-1]
    h = size // data.vqgan.config.downsample
    decode = runtime.in_cache_chunks(data.vqgan.decode_indices, data.device, data.vqgan.config.decode_activation_bytes(size))
    with data.precision.autocast():
        return decode(ids.view(len(ids), h, h)).float()


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
        return Evidence(per_image, set_level)


class CellScores:
    """Accumulates one cell's metrics over batches: per-image fidelity, set-level realism."""

    def __init__(self, data: EvalData, seed: int):
        self.data = data
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
            })


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
    """One row of the grid and what its statistics are computed from (None for a failed cell)."""

    row: dict
    evidence: Evidence | None


def _cell(method: str, mask: str, evidence: Evidence, seconds: float, n: int, **axes) -> Cell:
    row = {"method": method, "mask": mask, "schedule": None, "T": None, "sweet_spot": None, "n_images": n,
           "replicates": len(next(iter(evidence.per_image.values()))), **axes}
    row.update({m: float(np.nanmean(v)) if np.isfinite(v).any() else float("nan") for m, v in evidence.per_image.items()})
    row.update({m: level.value for m, level in evidence.set_level.items()})
    finite = all(np.isfinite(row[k]) for k in QUALITY + REALISM)
    return Cell({**row, "seconds_per_image": seconds / (n * row["replicates"]), "status": "ok" if finite else "non-finite metric"},
                evidence)


def _failure(error: BaseException) -> str:
    return f"failed: {type(error).__name__}: {error}"[:300]


def failed_cells(mask: str, schedule: str, T: int, sweet_spots: tuple[int, ...], error: BaseException) -> list[Cell]:
    """The cells of a trajectory that failed after its retries: no metrics, the error in `status`."""
    return [Cell({"method": "maskgit", "mask": mask, "schedule": schedule, "T": T, "sweet_spot": k, "status": _failure(error)}, None)
            for k in sorted(set(sweet_spots) | {T})]


def failed_baseline(method: str, mask: str, error: BaseException) -> Cell:
    """A baseline that failed after its retries: a row that says so, and the grid goes on."""
    return Cell({"method": method, "mask": mask, "status": _failure(error)}, None)


@dataclass
class Trajectory:
    cells: list[Cell]  # one per sweet spot
    samples: dict[int, np.ndarray]  # sweet spot -> (S, H, W, 3) uint8 composites of the first images, for sample strips


def sampling_seed(seed: int, replicate: int, start: int) -> int:
    """The Gumbel stream of one batch: the same in every trajectory (step 1 is shared), another per replicate."""
    return seed * 1_000_003 + start + replicate * 7_919_000_011


def run_trajectory(spec: GridSpec, mask: str, schedule: str, T: int, sweet_spots: tuple[int, ...]) -> Trajectory:
    """Decode all images with (schedule, T) for holes of kind `mask`, once per replicate; score every sweet spot."""
    data = load_data(spec)
    pixel_mask, token_mask = data.masks(mask, spec.seed)
    logits = runtime.in_cache_chunks(data.transformer, data.device, data.transformer.config.activation_bytes)
    ks = sorted(set(sweet_spots) | {T})
    n = len(data.images)
    resampling = Resampling.of(spec, n)
    evidence: dict[int, list[Evidence]] = {k: [] for k in ks}
    pixel_seconds = {k: 0.0 for k in ks}
    decode_seconds = 0.0
    samples = {}
    for replicate in range(spec.replicates):
        scores = {k: CellScores(data, spec.seed) for k in ks}
        for start in range(0, n, spec.batch_size):
            sl = slice(start, start + spec.batch_size)
            x, pm = data.images[sl].to(data.device), pixel_mask[sl].to(data.device)
            began = runtime.clock(data.device)
            generator = torch.Generator(data.device).manual_seed(sampling_seed(spec.seed, replicate, start))
            with data.precision.autocast():
                out = sampling.decode(logits, data.tokens[sl].to(data.device),
                                      token_mask[sl].to(data.device), schedule, T, ks, spec.temperature, generator,
                                      mask_id=data.transformer.config.mask_id)
            decode_seconds += runtime.clock(data.device) - began
            for k, ids in out.items():
                began = runtime.clock(data.device)
                pred = composite(x, _decode_pixels(data, ids), pm, spec.feather)
                pixel_seconds[k] += runtime.clock(data.device) - began
                scores[k].add(pred, x, pm)
                if start == 0 and replicate == 0:
                    samples[k] = shards.as_uint8(pred[: spec.sample_images])
        for k in ks:
            evidence[k].append(scores[k].evidence(resampling))
    # A cell's cost: k of the T transformer passes (measured together) plus its pixel decode.
    cells = [
        _cell("maskgit", mask, Evidence.mean(evidence[k]), decode_seconds * k / T + pixel_seconds[k], n,
              schedule=schedule, T=T, sweet_spot=k)
        for k in ks
    ]
    return Trajectory(cells, samples)


def with_first_step(first: Trajectory, rest: Trajectory | None, schedule: str, T: int) -> Trajectory:
    """The whole trajectory of (schedule, T): its k = 1 cell is the mask kind's shared first step, the rest decoded.

    `first` is the T = 1 trajectory (any schedule: one step never reads it); `rest` holds
    the sweet spots k > 1 (None for T = 1).
    """
    shared = Cell({**first.cells[0].row, "schedule": schedule, "T": T}, first.cells[0].evidence)
    return Trajectory([shared] + (rest.cells if rest else []), {**first.samples, **(rest.samples if rest else {})})


def _baseline(spec: GridSpec, mask: str, method: str, fill) -> Cell:
    """Score a baseline over the val set; fill(data, slice, images, pixel_mask) -> completed images."""
    data = load_data(spec)
    pixel_mask, _ = data.masks(mask, spec.seed)
    scores = CellScores(data, spec.seed)
    seconds = 0.0
    for start in range(0, len(data.images), spec.batch_size):
        sl = slice(start, start + spec.batch_size)
        x, pm = data.images[sl].to(data.device), pixel_mask[sl].to(data.device)
        began = runtime.clock(data.device)
        pred = fill(data, sl, x, pm)
        seconds += runtime.clock(data.device) - began
        scores.add(pred, x, pm)
    return _cell(method, mask, scores.evidence(Resampling.of(spec, len(data.images))), seconds, len(data.images))


def vq_ceiling(spec: GridSpec, mask: str) -> Cell:
    """The ceiling of any token predictor: decode the true tokens of every image, composite the same way."""
    return _baseline(spec, mask, "vq_ceiling", lambda data, sl, x, pm: composite(
        x, _decode_pixels(data, data.tokens[sl].to(data.device)), pm, spec.feather))


def telea_fill(images: torch.Tensor, pixel_mask: torch.Tensor, radius: int = 3) -> torch.Tensor:
    """Classical inpainting (OpenCV Telea) of (B, 3, H, W) images in [-1, 1]; known pixels are kept."""
    filled = [
        cv2.inpaint(np.ascontiguousarray(img), hole[0].astype(np.uint8) * 255, radius, cv2.INPAINT_TELEA)
        for img, hole in zip(shards.as_uint8(images), pixel_mask.cpu().numpy())  # OpenCV has no batched call
    ]
    return torch.from_numpy(np.stack(filled)).permute(0, 3, 1, 2).float().to(images.device) / 127.5 - 1


def telea(spec: GridSpec, mask: str) -> Cell:
    """A baseline without any learning: OpenCV's Telea inpainting of the same holes."""
    return _baseline(spec, mask, "telea", lambda data, sl, x, pm: telea_fill(x, pm))


def table(rows: list[dict], columns: list[str] = COLUMNS) -> pd.DataFrame:
    df = pd.DataFrame(rows).reindex(columns=columns)
    for col in ("T", "sweet_spot", "n_images", "replicates"):
        df[col] = df[col].astype("Int64")
    return df.sort_values(["mask", "method", "schedule", "T", "sweet_spot"], na_position="first", ignore_index=True)


def spec_for(paths, p) -> GridSpec:
    """The GridSpec of params `paths` (PathsParams) and `eval` (EvalParams)."""
    return GridSpec(
        vqgan_dir=str(paths.vqgan), transformer_dir=str(paths.transformer), shards_dir=str(paths.shards),
        tokens_dir=str(paths.tokens), cache_dir=str(paths.cache),
        fingerprint=fingerprint(paths.vqgan, paths.transformer, paths.tokens),
        num_images=p.num_images, batch_size=p.batch_size, seed=p.seed, replicates=p.replicates,
        bootstrap_resamples=p.bootstrap_resamples, selection_fraction=p.selection_fraction, temperature=p.temperature,
        feather=p.feather, sample_images=p.sample_images, download_weights=p.download_weights, fid=p.fid,
        precision=runtime.precision(p.precision, runtime.device()).name,
    )


def sample_inputs(spec: GridSpec, mask: str) -> dict[str, np.ndarray]:
    """The first sample images as uint8 (S, H, W, 3): input with the hole greyed, the mask, the original."""
    data = load_data(spec)
    x = data.images[: spec.sample_images]
    pm = data.masks(mask, spec.seed)[0][: spec.sample_images]
    return {
        "input": shards.as_uint8(torch.where(pm, torch.zeros_like(x), x)),
        "mask": shards.as_uint8(pm.float().expand_as(x) * 2 - 1),
        "original": shards.as_uint8(x),
    }
