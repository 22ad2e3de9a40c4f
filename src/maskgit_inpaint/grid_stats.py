"""A grid's statistics from its cells' Evidence: intervals, paired comparisons, the held-out pick.

- Every metric of every cell gets a `confidence` interval over all images
  (`<metric>_lo`, `<metric>_hi`).
- Every cell of a mask kind is compared, on the same images and holes, with the
  best cell of its kind and with each baseline (Telea, the VQ ceiling, T = 1),
  for the metrics in `evaluation.HELD_OUT`. Each (mask, metric, reference) is one
  family of tests, Holm-corrected at level 1 - confidence; the verdict
  (better / worse / tied) is the cell's, relative to the reference.
- The best cell is chosen on the selection half of the images and compared, and
  reported, on the report half only, so its figure is not flattered by the choice
  (the winner's curse). Baselines are compared on all images.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from maskgit_inpaint import evaluation, stats

INTERVAL_METRICS = evaluation.QUALITY + evaluation.REALISM + evaluation.PERCEPTUAL
LOWER_IS_BETTER = frozenset({"swd", "swd_masked", "lpips", "lpips_masked", "fid"})
REFERENCES = ("best", "telea", "vq_ceiling", "t1")  # what every cell is compared with
BASELINES = ("telea", "vq_ceiling", "t1")
CELL_KEYS = ["method", "mask", "schedule", "token_temperature", "T", "sweet_spot"]
COMPARISON_COLUMNS = ["metric", "reference", "reference_cell", "images", "difference", "lo", "hi", "p", "p_holm", "verdict"]
NO_INTERVAL = {"fid": "resampling FID needs a 2048-d covariance and matrix root per resample and cell; its column is a point value"}


@dataclass(frozen=True)
class Settings:
    confidence: float
    resamples: int  # of the per-image bootstraps (the set-level ones come with the Evidence)
    seed: int

    @property
    def alpha(self) -> float:
        return 1 - self.confidence


@dataclass
class Pick:
    """The best cell of one mask kind and metric: chosen on the selection half, reported on the report half."""

    cell: dict  # its keys
    selection: float  # its value on the selection half, where it won
    report: stats.Interval  # its value and interval on the report half
    tied: list[dict] = field(default_factory=list)  # cells the report half cannot tell from it
    against: dict[str, dict] = field(default_factory=dict)  # baseline -> its value and difference on the report half, with verdict

    def as_json(self) -> dict:
        return {"cell": self.cell, "name": name_of(self.cell), "selection": self.selection, "report": asdict(self.report),
                "tied": self.tied, "tied_count": len(self.tied), "against": self.against}


@dataclass
class GridStats:
    table: pd.DataFrame  # the grid, plus <metric>_lo / _hi and <metric>_vs_<reference> verdicts
    comparisons: pd.DataFrame  # one row per (cell, metric, reference): difference, lo, hi, p, p_holm, verdict
    picks: dict[str, dict[str, Pick]]  # mask -> metric -> pick


def keys_of(row: dict) -> dict:
    return {k: (None if pd.isna(row.get(k)) else row.get(k)) for k in CELL_KEYS}


def name_of(row: dict) -> str:
    if row["method"] != "maskgit":
        return row["method"]
    temperature = row.get("token_temperature")
    tau = "" if temperature is None or temperature == 1.0 else f" tau={temperature:g}"  # MaskGIT's draw goes unsaid
    return f"{row['schedule']}{tau} T={row['T']} k={row['sweet_spot']}"


def _per_image(cell: evaluation.Cell, metric: str, images: np.ndarray | None = None) -> np.ndarray:
    values = cell.evidence.per_image[metric].mean(0)  # (N,) averaged over replicates
    return values if images is None else values[images]


def _available(cell: evaluation.Cell, metric: str) -> bool:
    if metric in evaluation.PER_IMAGE:
        return bool(np.isfinite(cell.evidence.per_image[metric]).any())
    return bool(np.isfinite(cell.evidence.set_level[metric].value))


def interval(cell: evaluation.Cell, metric: str, settings: Settings) -> stats.Interval:
    """A cell's value of `metric` over all images, with its interval."""
    if cell.evidence is None or metric not in evaluation.PER_IMAGE + list(cell.evidence.set_level):
        return stats.NAN_INTERVAL
    if metric in evaluation.PER_IMAGE:
        return stats.mean_interval(_per_image(cell, metric), level=settings.confidence, resamples=settings.resamples, seed=settings.seed)
    level = cell.evidence.set_level[metric]
    return stats.replicate_interval(level.value, level.replicates if level.replicates is not None else [], level=settings.confidence)


def _half_value(cell: evaluation.Cell, metric: str, images: np.ndarray, half: str) -> float:
    if metric in evaluation.PER_IMAGE:
        values = _per_image(cell, metric, images)
        return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")
    return getattr(cell.evidence.set_level[metric], half)


def compare(cell: evaluation.Cell, ref: evaluation.Cell, metric: str, settings: Settings, images: np.ndarray | None) -> stats.Comparison:
    """cell - ref on `metric`, paired image for image: on the report half (`images`) or on all images (None)."""
    if metric in evaluation.PER_IMAGE:
        return stats.paired_means(_per_image(cell, metric, images), _per_image(ref, metric, images),
                                  level=settings.confidence, resamples=settings.resamples, seed=settings.seed)
    a, b = cell.evidence.set_level[metric], ref.evidence.set_level[metric]
    if images is None:
        return stats.paired_replicates(a.value, b.value, a.replicates, b.replicates, level=settings.confidence)
    return stats.paired_replicates(a.report, b.report, a.report_replicates, b.report_replicates, level=settings.confidence)


def same_decode(a: evaluation.Cell, b: evaluation.Cell) -> bool:
    """The shared first step appears under every (schedule, T): those rows are one decode, not a comparison."""
    return all(np.array_equal(a.evidence.per_image[m], b.evidence.per_image[m], equal_nan=True) for m in evaluation.QUALITY)


def _references(cells: list[evaluation.Cell], metric: str, halves: stats.Split) -> dict[str, evaluation.Cell]:
    """This mask kind's reference cells for `metric`: its best decoded cell (on the selection half) and the baselines."""
    refs = {}
    for c in cells:
        if c.row["method"] in ("telea", "vq_ceiling"):
            refs[c.row["method"]] = c
        elif c.row["sweet_spot"] == 1 and ("t1" not in refs or c.row.get("token_temperature") == 1.0):
            refs["t1"] = c  # a k = 1 cell is the one-step (T = 1) decode; MaskGIT's draw (temperature 1) where the grid has it
    decoded = [c for c in cells if c.row["method"] == "maskgit"]
    if decoded:
        sign = 1 if metric in LOWER_IS_BETTER else -1
        scores = [sign * _half_value(c, metric, halves.selection, "selection") for c in decoded]
        if np.isfinite(scores).any():
            refs["best"] = decoded[int(np.nanargmin(scores))]
    return refs


def compute(cells: list[evaluation.Cell], halves: stats.Split, settings: Settings) -> GridStats:
    """Intervals, comparisons and picks for every mask kind of a grid."""
    ok = [c for c in cells if c.evidence is not None and c.row.get("status") == "ok"]
    extra: dict[int, dict] = {id(c): {} for c in cells}
    for c in ok:
        for metric in INTERVAL_METRICS:
            iv = interval(c, metric, settings)
            extra[id(c)].update({f"{metric}_lo": iv.lo, f"{metric}_hi": iv.hi})
    comparisons, picks = [], {}
    for mask in dict.fromkeys(c.row["mask"] for c in cells):
        kind = [c for c in ok if c.row["mask"] == mask]
        picks[mask] = {}
        for metric in evaluation.HELD_OUT:
            kind_m = [c for c in kind if _available(c, metric)]
            refs = _references(kind_m, metric, halves)
            for ref_name, ref in refs.items():
                family = []
                for c in kind_m:
                    if c is ref or same_decode(c, ref):
                        continue
                    cmp = compare(c, ref, metric, settings, halves.report if ref_name == "best" else None)
                    family.append((c, cmp))
                adjusted = stats.holm(np.array([cmp.p for _, cmp in family]))
                for (c, cmp), p_holm in zip(family, adjusted):
                    v = stats.verdict(cmp.difference, p_holm, alpha=settings.alpha, lower_is_better=metric in LOWER_IS_BETTER)
                    extra[id(c)][f"{metric}_vs_{ref_name}"] = v
                    comparisons.append({**keys_of(c.row), "metric": metric, "reference": ref_name, "reference_cell": name_of(ref.row),
                                        "images": "report half" if ref_name == "best" else "all",
                                        **asdict(cmp), "p_holm": p_holm, "verdict": v})
            if "best" in refs:
                picks[mask][metric] = _pick(refs, kind_m, metric, halves, settings, extra)
    interval_columns = [f"{m}_{side}" for m in INTERVAL_METRICS for side in ("lo", "hi")]
    verdict_columns = [f"{m}_vs_{r}" for m in evaluation.HELD_OUT for r in REFERENCES]
    table = evaluation.table([{**c.row, **extra[id(c)]} for c in cells], evaluation.COLUMNS + interval_columns + verdict_columns)
    return GridStats(table, pd.DataFrame(comparisons, columns=CELL_KEYS + COMPARISON_COLUMNS), picks)


def _pick(refs: dict, cells: list[evaluation.Cell], metric: str, halves: stats.Split, settings: Settings, extra: dict) -> Pick:
    best = refs["best"]
    if metric in evaluation.PER_IMAGE:
        report = stats.mean_interval(_per_image(best, metric, halves.report), level=settings.confidence,
                                     resamples=settings.resamples, seed=settings.seed)
    else:
        level = best.evidence.set_level[metric]
        report = stats.replicate_interval(level.report, level.report_replicates, level=settings.confidence)
    tied = [keys_of(c.row) for c in cells if c is not best and c.row["method"] == "maskgit"
            and (same_decode(c, best) or extra[id(c)].get(f"{metric}_vs_best") == "tied")]
    # The pick against each baseline on the report half: one Holm family of these comparisons.
    against = {name: compare(best, refs[name], metric, settings, halves.report) for name in BASELINES if name in refs and refs[name] is not best}
    adjusted = stats.holm(np.array([c.p for c in against.values()]))
    summary = {name: {"baseline_value": _half_value(refs[name], metric, halves.report, "report"), **asdict(c), "p_holm": p,
                      "verdict": stats.verdict(c.difference, p, alpha=settings.alpha, lower_is_better=metric in LOWER_IS_BETTER)}
               for (name, c), p in zip(against.items(), adjusted)}
    return Pick(keys_of(best.row), _half_value(best, metric, halves.selection, "selection"), report, tied, summary)


def by_area(cells: list[evaluation.Cell], buckets: dict[str, np.ndarray]) -> pd.DataFrame:
    """Per cell and mask-area bucket (LaMa's evaluator): the images in it, each per-image metric's mean and standard
    error, and SWD (whole image and hole) on the bucket's images.

    `buckets` maps a mask kind to each image's bucket label (masks.area_buckets). SWD of a
    bucket of a few images is noisy (it has no interval here); FID is not split (the
    real images' statistics are cached as moments, not per image).
    """
    rows = []
    for c in cells:
        if c.evidence is None:
            continue
        labels = buckets[c.row["mask"]]
        for bucket in sorted(set(labels), key=lambda label: float(label.split("-")[0])):
            chosen = labels == bucket
            row = {**keys_of(c.row), "area": bucket, "n_images": int(chosen.sum())}
            for metric in evaluation.PER_IMAGE:
                values = c.evidence.per_image[metric].mean(0)[chosen]  # (n,) averaged over replicates
                finite = values[np.isfinite(values)]
                row[metric] = float(finite.mean()) if len(finite) else float("nan")
                row[f"{metric}_se"] = float(finite.std(ddof=1) / np.sqrt(len(finite))) if len(finite) > 1 else float("nan")
            row.update(c.evidence.by_area.get(bucket, {}))
            rows.append(row)
    return pd.DataFrame(rows)


def per_image_table(cells: list[evaluation.Cell], halves: stats.Split) -> pd.DataFrame:
    """Long format: one row per (cell, replicate, image, metric) with the image's half; unavailable metrics left out."""
    half = np.full(len(halves.selection) + len(halves.report), "report", dtype=object)
    half[halves.selection] = "selection"
    frames = []
    for c in cells:
        if c.evidence is None:
            continue
        for metric, values in c.evidence.per_image.items():
            if not np.isfinite(values).any():
                continue
            replicate, image = np.indices(values.shape)
            frames.append(pd.DataFrame({**{k: [c.row.get(k)] * values.size for k in CELL_KEYS},
                                        "replicate": replicate.ravel(), "image": image.ravel(), "half": half[image.ravel()],
                                        "metric": metric, "value": values.ravel()}))
    if not frames:
        return pd.DataFrame(columns=CELL_KEYS + ["replicate", "image", "half", "metric", "value"])
    out = pd.concat(frames, ignore_index=True)
    for col in ("T", "sweet_spot"):
        out[col] = out[col].astype("Int64")
    return out
