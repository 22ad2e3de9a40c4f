import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from maskgit_inpaint.models.transformer import MaskedTokenTransformer, TransformerConfig
from maskgit_inpaint.training.resume import Resume, ResumeMismatch

from conftest import run_stage, stage_env, write_tiny_params

LONGER = {"steps": 300, "batch_size": 32, "n_embd": 64, "n_head": 2, "checkpoint_every": 20, "eval_every": 100}


def _project(tiny_chain, path, transformer_updates):
    path.mkdir()
    shutil.copytree(tiny_chain / "data/tokens", path / "data/tokens")
    write_tiny_params(path / "params.yaml", transformer=transformer_updates)
    return {"MLFLOW_TRACKING_URI": f"sqlite:///{path / 'mlflow.db'}"}


def test_killed_training_resumes_to_the_same_weights(tiny_chain, tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    env = _project(tiny_chain, straight, LONGER)
    done = run_stage("train_transformer", straight, env)
    assert done.returncode == 0, done.stderr
    assert not (straight / "checkpoints/transformer.pt").exists()  # removed once the outs are written

    env = _project(tiny_chain, killed, LONGER)
    proc = subprocess.Popen([sys.executable, "-m", "stages.train_transformer"], cwd=killed,
                            env=stage_env(env),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = killed / "checkpoints/transformer.pt"
    deadline = time.time() + 120
    while not state.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert state.exists(), "training finished before its first checkpoint; make LONGER longer"
    assert not (killed / "models/transformer").exists()  # a killed stage leaves no half-written out

    done = run_stage("train_transformer", killed, env)
    assert done.returncode == 0, done.stderr
    assert "resuming from" in done.stdout
    a = load_file(straight / "models/transformer/model.safetensors")
    b = load_file(killed / "models/transformer/model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_refuses_state_from_other_params(tmp_path):
    model = MaskedTokenTransformer(TransformerConfig(codebook_size=8, n_tokens=4, n_layer=1, n_head=1, n_embd=8))
    optimizer = torch.optim.AdamW(model.parameters())
    Resume(tmp_path / "s.pt", {"lr": 0.001, "steps": 10, "checkpoint_every": 5}).save(model, optimizer, 5, {}, [])
    # Bookkeeping params may change between the kill and the resume ...
    assert Resume(tmp_path / "s.pt", {"lr": 0.001, "steps": 10, "checkpoint_every": 2}).load()["step"] == 5
    # ... params that shape the result may not.
    with pytest.raises(ResumeMismatch, match=r"lr.*delete the file"):
        Resume(tmp_path / "s.pt", {"lr": 0.01, "steps": 10, "checkpoint_every": 5}).load()
