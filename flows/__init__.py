"""Prefect flows: `eval-grid` (eval_grid.py) and its deployment (serve.py)."""
