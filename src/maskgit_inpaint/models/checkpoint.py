"""Self-describing model files and resumable training state.

A model directory holds the model only: `model.safetensors` and `config.json`
({"model": the architecture, plus what defines the weights: steps, init}). What a
run measures (metrics, throughput, the hardware) goes to metrics/, never here: the
same weights then give a byte-identical directory, and DVC reruns nothing after a
stage that retrained to the same model. Training state (weights, optimizer,
config, step, best metric, curve, RNG) is one `torch.save` file loaded with
`weights_only=True`; resuming takes the architecture from it.
"""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from maskgit_inpaint.io import atomic_file

WEIGHTS = "model.safetensors"
CONFIG = "config.json"


def save_model(model: nn.Module, directory: Path | str, extra: dict | None = None) -> None:
    """Write weights and config (model.config is a dataclass) into `directory`.

    `extra`: what, besides the architecture, defines the weights (steps, init); nothing
    a run measures (see the module docstring).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, directory / WEIGHTS)
    info = {"model": asdict(model.config), **(extra or {})}
    (directory / CONFIG).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")  # sorted: bytes set by content alone


def read_model(directory: Path | str, made_by: str, device: str | torch.device = "cpu") -> tuple[dict, dict[str, torch.Tensor]]:
    """(config.json contents, state dict) of a model directory written by `save_model`."""
    directory = Path(directory)
    if not (directory / WEIGHTS).is_file() or not (directory / CONFIG).is_file():
        raise FileNotFoundError(f"{directory}: no {WEIGHTS} + {CONFIG}; run `dvc repro {made_by}` first")
    return json.loads((directory / CONFIG).read_text()), load_file(directory / WEIGHTS, device=str(device))


def save_training_state(
    path: Path | str, model: nn.Module, optimizer: torch.optim.Optimizer, step: int, best: dict, history: list[dict], params: dict,
    extra: dict | None = None,
) -> None:
    """Everything needed to continue a run exactly where it stopped (written atomically).

    `extra` holds what else the run carries (e.g. a discriminator and its optimizer), tensors and plain data only.
    """
    state = {
        **(extra or {}),
        "model_config": asdict(model.config),
        "params": params,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "step": step,
        "best": best,
        "history": history,  # the logged curve so far, so a resumed run reports all of it
        "torch_rng": torch.get_rng_state(),
    }
    with atomic_file(path) as tmp:
        torch.save(state, tmp)


def load_training_state(path: Path | str) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


class ForeignCheckpointError(ValueError):
    """A checkpoint from another code base is missing, unreadable, or does not fit the model."""


def key_map_problems(weights: dict[str, torch.Tensor], key_map: dict[str, str], expected: dict[str, torch.Tensor]) -> list[str]:
    """Why `weights` (a foreign file's tensors) do not load through `key_map` (file key -> ours) into a state dict
    shaped like `expected`: keys missing from the file, keys the map does not know, shapes that differ."""
    problems = [f"missing {k}" for k in key_map if k not in weights]
    problems += [f"unexpected {k}" for k in weights if k not in key_map]
    problems += [f"{k}: file {tuple(weights[k].shape)}, model {tuple(expected[ours].shape)}"
                 for k, ours in key_map.items() if k in weights and weights[k].shape != expected[ours].shape]
    return problems


def listed(problems: list[str], limit: int = 12) -> str:
    """The first `limit` problems, one an indented line: enough to see the pattern without a page of keys."""
    return "\n  " + "\n  ".join(problems[:limit]) + ("\n  ..." if len(problems) > limit else "")


class _Inert:
    """Stands in for a class or function pickled beside the weights: takes any arguments and state, runs nothing."""

    def __new__(cls, *args, **kwargs):
        return super().__new__(cls)

    def __init__(self, *args, **kwargs) -> None:
        self.args = args

    def __setstate__(self, state) -> None:
        self.state = state


def _placeholder(qualified_name: str) -> type:
    module, _, name = qualified_name.rpartition(".")
    return type(name, (_Inert,), {"__module__": module, "__doc__": f"placeholder for {qualified_name}"})


def read_foreign_state_dict(path: Path | str) -> dict[str, torch.Tensor]:
    """The `state_dict` of a Lightning checkpoint (or a bare state dict), loaded with `weights_only=True`.

    Lightning pickles callback classes and hyperparameter objects beside the weights;
    their code is neither needed nor trusted, so every such class is replaced by an
    inert placeholder before loading and the weights come back as plain tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise ForeignCheckpointError(f"{path}: no such checkpoint file; download it or fix the path in params.yaml")
    try:
        try:
            foreign = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except (RuntimeError, ValueError):  # the legacy (pre-zip) format cannot be scanned; load it as it is
            foreign = []
        with torch.serialization.safe_globals([(_placeholder(name), name) for name in foreign]):
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - a truncated or non-torch file: say which and why
        raise ForeignCheckpointError(f"{path}: not a readable torch checkpoint ({type(error).__name__}: {error}); "
                                     "download it again") from error
    state = loaded.get("state_dict", loaded) if isinstance(loaded, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ForeignCheckpointError(f"{path}: holds neither a state dict nor a Lightning checkpoint with `state_dict`")
    return state
