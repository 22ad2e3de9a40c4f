"""Stage `register_model`: the trained pair + the grid's picks -> paths.mlflow_model (an MLflow pyfunc model), registered in MLflow.

The model directory is written (atomically) and checked (loaded as `mlflow models serve`
loads it, its input example completed) before the store is touched: a tracking store
that is down costs the registration, never the model; one warning says how to register later.
"""
from __future__ import annotations

import sys
import time
import warnings

from maskgit_inpaint import config, inpaint, mlflow_model, tracking
from maskgit_inpaint.data import shards
from maskgit_inpaint.io import atomic_dir


def trained_on(params: config.Params) -> mlflow_model.TrainedOn:
    manifest = shards.load_manifest(params.paths.shards)
    counts = ", ".join(f"{split} {manifest.splits[split].count}" for split in sorted(manifest.splits))
    return mlflow_model.TrainedOn(profile=params.profile, source=params.data.source,
                                  shards=f"{manifest.source} ({manifest.layout}): {counts} images at {manifest.image_size}px")


def main(params_file: str = str(config.DEFAULT_PARAMS)) -> None:
    began = time.perf_counter()
    params = config.load(params_file)
    out = params.paths.mlflow_model
    package, provenance = inpaint.workspace_package(params), trained_on(params)
    with atomic_dir(out) as tmp:
        mlflow_model.save(tmp, package, provenance)
        mlflow_model.check(tmp)
    try:
        tracking.require_reachable()  # a server that is down says so in seconds, not after MLflow's minutes of retries
        registered = mlflow_model.log(package, provenance, registered_name=params.registry.name)
    except Exception as error:  # noqa: BLE001 - any store failure: the saved model stands
        warnings.warn(f"MLflow store {tracking.tracking_uri()} could not take the model ({type(error).__name__}: "
                      f"{str(error).splitlines()[0] if str(error) else ''}); {out} is complete. Once the store is up, "
                      "`dvc repro --force register_model` registers it", mlflow_model.NotRegistered, stacklevel=2)
        registry = "not registered"
    else:
        registry = (f"registered {registered.name} version {registered.version}" if registered.new
                    else f"unchanged: {registered.name} version {registered.version} holds the same weights and picks")
        registry += f" -> {registered.uri} in {registered.tracking_uri}"
    settings = package.settings(mlflow_model.DEFAULT_KIND)
    print(f"register_model: {out} (serves {mlflow_model.DEFAULT_KIND} holes with {settings.schedule} T={settings.T} "
          f"k={settings.sweet_spot}); {registry} ({time.perf_counter() - began:.0f}s)")


if __name__ == "__main__":
    main(*sys.argv[1:])
