"""Does one Gumbel stream's interval already span the sampling noise? (`eval.replicates: 1`)

On the trained models of `make run` (models/, data/): one trajectory (center mask,
cosine, T = 8, every sweet spot) decoded under REPLICATES Gumbel streams, the
masks the same. For each cell and metric: the spread between streams (the sd of
the per-stream values) against the bootstrap standard error of a single stream
(what the grid's intervals are made of with `replicates: 1`). The bootstrap
resamples images, and each image's value carries its own draw of the sampling
noise, so its standard error should be at least the stream-to-stream sd; when it
is, one replicate gives honest intervals and more replicates buy only width.
Last line: one JSON object; `ratio` = the median over cells and metrics of
(stream-to-stream sd) / (one stream's bootstrap standard error), both measured in
this run: below 1 when one stream's interval spans the sampling noise.
"""
from __future__ import annotations

import dataclasses
import json

import numpy as np

from maskgit_inpaint import config, evaluation, runtime

REPLICATES = 4
MASK, SCHEDULE, T, SWEET_SPOTS, TOKEN_TEMPERATURE = "center", "cosine", 8, (1, 2, 4, 6, 8), 1.0
METRICS = ("psnr_masked", "ssim_masked", "swd_masked")


def main() -> None:
    params = config.load(config.DEFAULT_PARAMS)
    spec = evaluation.spec_for(params.paths, params.eval)
    many = evaluation.run_trajectory(dataclasses.replace(spec, replicates=REPLICATES), MASK, SCHEDULE, T, SWEET_SPOTS, TOKEN_TEMPERATURE)
    single = evaluation.run_trajectory(dataclasses.replace(spec, replicates=1), MASK, SCHEDULE, T, SWEET_SPOTS, TOKEN_TEMPERATURE)
    rows = []
    for cell, alone in zip(many.cells, single.cells):
        ev = cell.evidence
        for metric in METRICS:
            if metric in evaluation.PER_IMAGE:
                per_stream = ev.per_image[metric].mean(1)  # (replicates,) image means
                first = ev.per_image[metric][0]
                se = float(first.std(ddof=1) / np.sqrt(len(first)))  # the bootstrap SE of a mean, in closed form
            else:
                per_stream = np.array(ev.set_level[metric].per_replicate)
                se = float(np.std(alone.evidence.set_level[metric].replicates, ddof=1))
            rows.append({"k": cell.row["sweet_spot"], "metric": metric, "between_streams_sd": float(np.std(per_stream, ddof=1)),
                         "bootstrap_se": se, "ratio": float(np.std(per_stream, ddof=1)) / se})
    for r in rows:
        print(f"k={r['k']} {r['metric']:12s} between-stream sd {r['between_streams_sd']:.4g}  single-stream bootstrap se {r['bootstrap_se']:.4g}  "
              f"ratio {r['ratio']:.2f}")
    prec = runtime.precision(params.eval.precision, runtime.device())
    summary = {m: float(np.median([r["ratio"] for r in rows if r["metric"] == m])) for m in METRICS}
    print(json.dumps({"replicates": REPLICATES, "images": params.eval.num_images, "cells": len(many.cells),
                      "ratio": float(np.median([r["ratio"] for r in rows])), "median_ratio_by_metric": summary,
                      "rows": rows, **prec.facts()}))


if __name__ == "__main__":
    main()
