"""Stage `eval_grid`: run the Prefect flow `eval-grid` in-process -> results/, metrics/eval.json, MLflow."""
from __future__ import annotations

import sys

from flows.eval_grid import eval_grid
from maskgit_inpaint import config, grid_runner


def main(params_file: str = str(config.DEFAULT_PARAMS)) -> None:
    try:  # before Prefect starts: a scheduler that is not there is one line, not a failed flow's traceback
        grid_runner.check(config.load(params_file).eval)
    except grid_runner.ClusterUnavailable as err:
        sys.exit(str(err))
    eval_grid(params_file=params_file)


if __name__ == "__main__":
    main(*sys.argv[1:])
