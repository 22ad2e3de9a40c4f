"""Loss curves as csv files that `dvc plots show` reads."""
from __future__ import annotations

import csv
from pathlib import Path

from maskgit_inpaint.io import atomic_file


def write_curve(path: Path, rows: list[dict], columns: list[str] | None = None) -> None:
    """Rows that have every column (default: the first row's keys), one line each."""
    columns = columns or list(rows[0])
    with atomic_file(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(r for r in rows if all(c in r for c in columns))
