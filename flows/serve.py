"""Serve the `eval-grid` flow as deployment `eval-grid/default` against a Prefect server.

    prefect server start --host 127.0.0.1 --port 4200          # terminal 1
    PREFECT_API_URL=http://127.0.0.1:4200/api python -m flows.serve   # terminal 2
    PREFECT_API_URL=http://127.0.0.1:4200/api prefect deployment run 'eval-grid/default' --watch
"""
from __future__ import annotations

from flows.eval_grid import eval_grid

if __name__ == "__main__":
    eval_grid.serve(name="default")
