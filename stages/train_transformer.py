"""Stage `train_transformer`: MVTM on the token arrays -> paths.transformer, metrics/transformer.json."""
from __future__ import annotations

import sys
import time

import mlflow

from maskgit_inpaint import config, tracking
from maskgit_inpaint.io import atomic_dir, write_json
from maskgit_inpaint.models.checkpoint import save_model
from maskgit_inpaint.training import transformer
from maskgit_inpaint.training.curves import write_curve


def main(params_file: str = str(config.DEFAULT_PARAMS)) -> None:
    began = time.perf_counter()
    params = config.load(params_file)
    p, paths = params.transformer, params.paths
    state = paths.checkpoints / "transformer.pt"
    with tracking.run("transformer", run_name="train_transformer", params=p.model_dump(mode="json")):
        result = transformer.train(p, paths.tokens, state)
        with atomic_dir(paths.transformer) as tmp:
            save_model(result.model, tmp, extra={"steps": p.steps, "metrics": result.metrics})
        mlflow.log_artifacts(str(paths.transformer), artifact_path="model")
    write_json(paths.metrics / "transformer.json", result.metrics)
    write_curve(paths.metrics / "transformer_train.csv", result.curve, ["step", "train_loss", "lr"])
    write_curve(paths.metrics / "transformer_val.csv", result.curve, ["step", "val_accuracy", "val_nll"])
    state.unlink(missing_ok=True)  # outs are complete: nothing left to resume
    m = result.metrics
    n_params = sum(q.numel() for q in result.model.parameters())
    print(f"train_transformer: {p.steps} steps, {n_params / 1e6:.2f}M params; val masked-token accuracy "
          f"{m['val_accuracy']:.3f} at ratio {p.eval_mask_ratio} (best {m['best_val_accuracy']:.3f}), NLL {m['val_nll']:.3f} "
          f"-> {paths.transformer} ({time.perf_counter() - began:.0f}s)")


if __name__ == "__main__":
    main(*sys.argv[1:])
