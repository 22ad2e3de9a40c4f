"""Resume a killed training run from its last training-state checkpoint."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch.nn as nn
import torch.optim

from maskgit_inpaint.models.checkpoint import load_training_state, save_training_state

# Params that change bookkeeping but not the numbers a run produces.
BOOKKEEPING = frozenset({"checkpoint_every", "num_workers", "eval_images"})


class ResumeMismatch(ValueError):
    """The saved state belongs to a run with other params."""


@dataclass
class Resume:
    path: Path  # training-state file; survives a killed stage (it is not a DVC out)
    params: dict  # this run's params section (json-like)

    def load(self) -> dict | None:
        """The saved state, or None to start afresh. Params that shape results must match."""
        if not self.path.is_file():
            return None
        state = load_training_state(self.path)
        saved = state["params"]
        differ = sorted(k for k in set(saved) | set(self.params) if k not in BOOKKEEPING and saved.get(k) != self.params.get(k))
        if differ:
            raise ResumeMismatch(
                f"{self.path}: saved at step {state['step']} by a run with other {', '.join(differ)} "
                f"({', '.join(f'{k}={saved.get(k)!r}' for k in differ)}). Restore those params to resume, "
                "or delete the file to start afresh."
            )
        print(f"resuming from {self.path} at step {state['step']}")
        return state

    def save(self, model: nn.Module, optimizer: torch.optim.Optimizer, step: int, best: dict, history: list[dict],
             extra: dict | None = None) -> None:
        save_training_state(self.path, model, optimizer, step, best, history, self.params, extra)
