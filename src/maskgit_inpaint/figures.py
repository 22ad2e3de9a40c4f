"""Pictures of a grid: metric heatmaps (schedule x sweet spot per T; schedule x T) and sample strips.

A grid with several token temperatures gets one heatmap row per (schedule, temperature).

Heatmaps take the grid table with a `mark` column (2: the mask kind's best cell, 1: a
cell tied with it, 0: neither): the best is outlined thick, ties dashed, and every
cell shows its value over its interval's half-width.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on CI or servers
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402


def _panel(ax, cells: pd.DataFrame, columns: str, metric: str, cmap: str, vmin: float, vmax: float):
    """One annotated heatmap panel: decoders (`decoder` labels) down, `columns` across; outlines mark the best cell and its ties."""
    half = (cells[f"{metric}_hi"] - cells[f"{metric}_lo"]) / 2
    grids = {name: cells.assign(_v=v).pivot(index="decoder", columns=columns, values="_v")
             for name, v in (("value", cells[metric]), ("half", half), ("mark", cells["mark"]))}
    values = grids["value"].to_numpy(dtype=float)
    image = ax.imshow(values, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
    ax.set_xticks(range(values.shape[1]), [str(c) for c in grids["value"].columns])
    ax.set_yticks(range(values.shape[0]), list(grids["value"].index))
    for (i, j), value in np.ndenumerate(values):
        if not np.isfinite(value):
            continue
        width = grids["half"].to_numpy(dtype=float)[i, j]
        label = f"{value:.4g}" + (f"\n±{width:.2g}" if np.isfinite(width) else "")
        ax.text(j, i, label, ha="center", va="center", color="white", fontsize=7)
        mark = grids["mark"].to_numpy(dtype=float)[i, j]
        if mark > 0:
            ax.add_patch(Rectangle((j - 0.46, i - 0.46), 0.92, 0.92, fill=False, edgecolor="red" if mark == 2 else "orange",
                                   linewidth=2.5 if mark == 2 else 1.2, linestyle="-" if mark == 2 else "--"))
    return image


def _style(metric: str) -> tuple[str, str]:
    lower_is_better = metric.startswith(("swd", "lpips", "fid"))
    return ("viridis_r", "lower") if lower_is_better else ("viridis", "higher")  # brighter is always better


def _decoded(cells: pd.DataFrame) -> pd.DataFrame:
    """The decoded cells with a row label: the schedule, and the token temperature when the grid has several."""
    several = cells["token_temperature"].nunique() > 1
    label = cells["schedule"] + (" tau=" + cells["token_temperature"].map("{:g}".format) if several else "")
    return cells.assign(decoder=label)


def heatmap(df: pd.DataFrame, metric: str) -> Figure:
    """Schedule x sweet spot: one row of panels per mask kind, one panel per T; colours shared per mask."""
    decoded = _decoded(df[(df.method == "maskgit") & df[metric].notna()])
    kinds, Ts = list(dict.fromkeys(decoded["mask"])), sorted(decoded["T"].unique())
    fig, axes = plt.subplots(len(kinds), len(Ts), figsize=(2.2 + 0.9 * decoded.sweet_spot.nunique() * len(Ts), 0.6 + 2.4 * len(kinds)),
                             squeeze=False, layout="constrained")
    cmap, better = _style(metric)
    for row, kind in enumerate(kinds):
        cells = decoded[decoded["mask"] == kind]
        for ax, T in zip(axes[row], Ts):
            image = _panel(ax, cells[cells["T"] == T], "sweet_spot", metric, cmap, cells[metric].min(), cells[metric].max())
            ax.set_title(f"{kind}, T = {T}", fontsize=9)
            ax.set_xlabel("sweet spot k")
        fig.colorbar(image, ax=axes[row].tolist(), label=metric)
    fig.suptitle(f"{metric} ({better} is better) by schedule x sweet spot; ± interval half-width; "
                 "red: best (selection half), orange dashed: tied with it (report half)", fontsize=9)
    return fig


def heatmap_by_T(df: pd.DataFrame, metric: str) -> Figure:
    """Schedule x T at k = T (the MaskGIT ablation): one panel per mask kind."""
    decoded = _decoded(df[(df.method == "maskgit") & (df.sweet_spot == df["T"]) & df[metric].notna()])
    kinds = list(dict.fromkeys(decoded["mask"]))
    fig, axes = plt.subplots(1, len(kinds), figsize=(2.0 + 0.9 * decoded["T"].nunique() * len(kinds), 3.0),
                             squeeze=False, layout="constrained")
    cmap, better = _style(metric)
    for ax, kind in zip(axes[0], kinds):
        cells = decoded[decoded["mask"] == kind]
        fig.colorbar(_panel(ax, cells, "T", metric, cmap, cells[metric].min(), cells[metric].max()), ax=ax)
        ax.set_title(f"{kind} mask", fontsize=9)
        ax.set_xlabel("T (decoding steps)")
    fig.suptitle(f"{metric} ({better} is better) by schedule x T, full decode; ± interval half-width; outlines as in the sweet-spot map",
                 fontsize=9)
    return fig


def sample_strip(columns: dict[str, np.ndarray], title: str = "") -> Figure:
    """Images side by side: one column per label, one row per image; arrays (S, H, W, 3) uint8."""
    labels = list(columns)
    rows = len(next(iter(columns.values())))
    fig, axes = plt.subplots(rows, len(labels), figsize=(1.3 * len(labels), 1.3 * rows + 0.4), squeeze=False)
    for j, label in enumerate(labels):
        for i in range(rows):
            ax = axes[i][j]
            ax.imshow(columns[label][i], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(label, fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def save(fig: Figure, path: Path, close: bool = True) -> None:
    fig.savefig(path, dpi=120, bbox_inches="tight")
    if close:
        plt.close(fig)


def close(fig: Figure) -> None:
    plt.close(fig)
