"""Pictures of a grid: metric heatmaps (schedule x sweet spot, one panel per T) and sample strips."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on CI or servers
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402


def heatmap(df: pd.DataFrame, metric: str) -> Figure:
    """One panel per T: rows = schedules, columns = sweet spots, cells annotated with the value."""
    decoded = df[df.method == "maskgit"]
    Ts = sorted(decoded["T"].dropna().unique())
    fig, axes = plt.subplots(1, len(Ts), figsize=(2.2 + 0.9 * decoded.sweet_spot.nunique() * len(Ts), 3.0),
                             squeeze=False, layout="constrained")
    vmin, vmax = decoded[metric].min(), decoded[metric].max()
    lower_is_better = metric.startswith("swd")
    cmap = "viridis_r" if lower_is_better else "viridis"  # brighter is always better
    for ax, T in zip(axes[0], Ts):
        grid = decoded[decoded["T"] == T].pivot(index="schedule", columns="sweet_spot", values=metric)
        image = ax.imshow(grid.to_numpy(dtype=float), cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
        ax.set_xticks(range(grid.shape[1]), [str(k) for k in grid.columns])
        ax.set_yticks(range(grid.shape[0]), list(grid.index))
        ax.set_xlabel("sweet spot k")
        ax.set_title(f"T = {T}")
        for (i, j), value in np.ndenumerate(grid.to_numpy(dtype=float)):
            if np.isfinite(value):
                ax.text(j, i, f"{value:.4g}", ha="center", va="center", color="white", fontsize=8)
    fig.colorbar(image, ax=axes[0].tolist(), label=metric)
    better = "lower" if lower_is_better else "higher"
    fig.suptitle(f"{metric} ({better} is better) by schedule x sweet spot (mask: {', '.join(decoded['mask'].unique())})", fontsize=10)
    return fig


def sample_strip(columns: dict[str, np.ndarray]) -> Figure:
    """Images side by side: one column per label, one row per image; arrays (S, H, W, 3) uint8."""
    labels = list(columns)
    rows = len(next(iter(columns.values())))
    fig, axes = plt.subplots(rows, len(labels), figsize=(1.3 * len(labels), 1.3 * rows), squeeze=False)
    for j, label in enumerate(labels):
        for i in range(rows):
            ax = axes[i][j]
            ax.imshow(columns[label][i], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(label, fontsize=7)
    fig.tight_layout()
    return fig


def save(fig: Figure, path: Path) -> None:
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
