"""Pictures of a grid: metric heatmaps (schedule x sweet spot per T; schedule x T) and sample strips."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on CI or servers
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402


def _panel(ax, grid: pd.DataFrame, cmap: str, vmin: float, vmax: float):
    """One annotated heatmap panel of a pivoted table."""
    values = grid.to_numpy(dtype=float)
    image = ax.imshow(values, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
    ax.set_xticks(range(grid.shape[1]), [str(c) for c in grid.columns])
    ax.set_yticks(range(grid.shape[0]), list(grid.index))
    for (i, j), value in np.ndenumerate(values):
        if np.isfinite(value):
            ax.text(j, i, f"{value:.4g}", ha="center", va="center", color="white", fontsize=8)
    return image


def _style(metric: str) -> tuple[str, str]:
    lower_is_better = metric.startswith(("swd", "lpips", "fid"))
    return ("viridis_r", "lower") if lower_is_better else ("viridis", "higher")  # brighter is always better


def heatmap(df: pd.DataFrame, metric: str) -> Figure:
    """Schedule x sweet spot: one row of panels per mask kind, one panel per T; colours shared per mask."""
    decoded = df[(df.method == "maskgit") & df[metric].notna()]
    kinds, Ts = list(dict.fromkeys(decoded["mask"])), sorted(decoded["T"].unique())
    fig, axes = plt.subplots(len(kinds), len(Ts), figsize=(2.2 + 0.9 * decoded.sweet_spot.nunique() * len(Ts), 0.6 + 2.4 * len(kinds)),
                             squeeze=False, layout="constrained")
    cmap, better = _style(metric)
    for row, kind in enumerate(kinds):
        cells = decoded[decoded["mask"] == kind]
        for ax, T in zip(axes[row], Ts):
            grid = cells[cells["T"] == T].pivot(index="schedule", columns="sweet_spot", values=metric)
            image = _panel(ax, grid, cmap, cells[metric].min(), cells[metric].max())
            ax.set_title(f"{kind}, T = {T}", fontsize=9)
            ax.set_xlabel("sweet spot k")
        fig.colorbar(image, ax=axes[row].tolist(), label=metric)
    fig.suptitle(f"{metric} ({better} is better) by schedule x sweet spot", fontsize=10)
    return fig


def heatmap_by_T(df: pd.DataFrame, metric: str) -> Figure:
    """Schedule x T at k = T (the MaskGIT ablation): one panel per mask kind."""
    decoded = df[(df.method == "maskgit") & (df.sweet_spot == df["T"]) & df[metric].notna()]
    kinds = list(dict.fromkeys(decoded["mask"]))
    fig, axes = plt.subplots(1, len(kinds), figsize=(2.0 + 0.9 * decoded["T"].nunique() * len(kinds), 3.0),
                             squeeze=False, layout="constrained")
    cmap, better = _style(metric)
    for ax, kind in zip(axes[0], kinds):
        cells = decoded[decoded["mask"] == kind]
        grid = cells.pivot(index="schedule", columns="T", values=metric)
        fig.colorbar(_panel(ax, grid, cmap, cells[metric].min(), cells[metric].max()), ax=ax)
        ax.set_title(f"{kind} mask", fontsize=9)
        ax.set_xlabel("T (decoding steps)")
    fig.suptitle(f"{metric} ({better} is better) by schedule x T, full decode", fontsize=10)
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


def save(fig: Figure, path: Path) -> None:
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
