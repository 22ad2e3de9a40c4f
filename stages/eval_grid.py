"""Stage `eval_grid`: run the Prefect flow `eval-grid` in-process -> results/, metrics/eval.json, MLflow."""
from __future__ import annotations

import sys

from flows.eval_grid import eval_grid
from maskgit_inpaint import config


def main(params_file: str = str(config.DEFAULT_PARAMS)) -> None:
    eval_grid(params_file=params_file)


if __name__ == "__main__":
    main(*sys.argv[1:])
