"""DVC stage entry points, one per stage of dvc.yaml: `python -m stages.<name>`."""
