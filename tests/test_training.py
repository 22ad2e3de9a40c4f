import dataclasses
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch._dynamo.utils import counters

from maskgit_inpaint import config, runtime
from maskgit_inpaint.io import sha256_file
from maskgit_inpaint.models.checkpoint import CONFIG, load_training_state
from maskgit_inpaint.models.transformer import MaskedTokenTransformer, TransformerConfig
from maskgit_inpaint.training import transformer
from maskgit_inpaint.training.distributed import Processes, backend
from maskgit_inpaint.training.resume import Resume, ResumeMismatch
from maskgit_inpaint.training.transformer import TransformerMetrics, ValScores, training_flops_per_token
from stages import train_transformer as train_stage

from conftest import kill_stage_at_first_checkpoint, run_stage, stage_env, write_tiny_params

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
    state = killed / "checkpoints/transformer.pt"
    kill_stage_at_first_checkpoint("train_transformer", killed, env, state)
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


def test_two_processes_train_under_torchrun_with_gloo(tiny_chain, tmp_path):
    env = _project(tiny_chain, tmp_path / "ddp", {"steps": 10, "batch_size": 8, "eval_every": 10})
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "stages.train_transformer"], cwd=tmp_path / "ddp", env=stage_env(env),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 process(es)" in done.stdout and done.stdout.count("train_transformer:") == 1  # rank 0 reports
    m = json.loads((tmp_path / "ddp/metrics/transformer.json").read_text())
    assert m["processes"] == 2 and m["steps"] == 10
    assert (tmp_path / "ddp/models/transformer/model.safetensors").is_file()
    assert not (tmp_path / "ddp/checkpoints/transformer.pt").exists()


def test_process_groups_use_nccl_between_gpus_and_gloo_between_cpus():
    assert backend(torch.device("cuda", 1)) == "nccl"
    assert backend(torch.device("cpu")) == "gloo"


def test_val_accuracy_per_mask_ratio_and_the_most_frequent_token_baseline(tiny_chain):
    m = json.loads((tiny_chain / "metrics/transformer.json").read_text())
    for ratio in (0.25, 0.5, 0.75):
        assert 0 <= m[f"val_accuracy_{ratio}"] <= 1 and m[f"val_nll_{ratio}"] > 0
    assert m["val_accuracy"] == pytest.approx(np.mean([m[f"val_accuracy_{r}"] for r in (0.25, 0.5, 0.75)]))
    train, val = np.load(tiny_chain / "data/tokens/train.npy"), np.load(tiny_chain / "data/tokens/val.npy")
    mode = np.bincount(train.ravel()).argmax()
    assert m["baseline_accuracy"] == pytest.approx((val == mode).mean())


def test_token_meta_names_the_tokenizer_it_came_from(tiny_chain):
    meta = json.loads((tiny_chain / "data/tokens/meta.json").read_text())
    assert meta["vqgan_sha256"] == sha256_file(tiny_chain / "models/vqgan/model.safetensors")
    assert meta["train_count"] == len(np.load(tiny_chain / "data/tokens/train.npy", mmap_mode="r"))


def test_training_flops_count_every_matmul_weight():
    config = TransformerConfig(codebook_size=1024, n_tokens=256, n_layer=24, n_head=16, n_embd=768, mlp_ratio=4)
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        model = MaskedTokenTransformer(config)
    matmul = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert training_flops_per_token(config) == 6 * matmul + 12 * 24 * 768 * 256
    assert 1.0e9 < training_flops_per_token(config) < 1.1e9  # ~270 GFLOP per 256-token image, as the issue estimates


def test_gpu_flops_figures_are_per_gpu_tflops_and_mfu_where_the_peak_is_known():
    assert transformer.flops_figures(494.5e12, "NVIDIA H100 80GB HBM3") == {"tflops_per_s": pytest.approx(494.5),
                                                                              "mfu": pytest.approx(0.5)}
    assert transformer.flops_figures(2e15, "NVIDIA B200") == {"tflops_per_s": pytest.approx(2000.0)}


def test_forced_fp16_trains_with_loss_scaling(tiny_chain, tmp_path, monkeypatch):
    # fp16 is what auto picks on GPUs without bf16; on this CPU it is emulated (and says so), which is enough to
    # run the loss-scaling path: scaled backward, unscaled clipping, skipped steps on overflow, scaler state saved.
    p = config.load(write_tiny_params(tmp_path / "params.yaml", transformer={"steps": 6, "checkpoint_every": 3,
                                                                           "precision": "fp16"})).transformer
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    state = tmp_path / "state.pt"
    monkeypatch.setattr(runtime, "_warned", set())  # the once-per-process warning, fresh for this test
    with pytest.warns(runtime.SlowPrecisionWarning), mlflow.start_run():
        result = transformer.train(p, tiny_chain / "data/tokens", state, Processes(0, 1, 0), torch.device("cpu"))
    assert result.precision.name == "fp16" and result.precision.grad_scaler().is_enabled()
    assert all(torch.isfinite(q).all() for q in result.model.parameters())
    assert all(np.isfinite(score.nll) for score in result.metrics.val.values())
    assert load_training_state(state)["scaler"]["scale"] > 0  # a resume continues with the same loss scale


def _train_few_steps(tokens_dir: Path, tmp_path: Path, *, compiled: bool) -> transformer.TransformerResult:
    # fp32: then compiling may change only the order of float operations (fused kernels), not their precision.
    p = config.load(write_tiny_params(tmp_path / f"params-{compiled}.yaml", transformer={
        "steps": 4, "eval_every": 4, "precision": "fp32", "compile": compiled})).transformer
    dev = runtime.setup(p.seed)  # as distributed.start: both runs begin from the same weights
    with mlflow.start_run():
        return transformer.train(p, tokens_dir, tmp_path / f"state-{compiled}.pt", Processes(0, 1, 0), dev)


def test_compiled_training_matches_eager_training(tiny_chain, tmp_path):
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    eager = _train_few_steps(tiny_chain / "data/tokens", tmp_path, compiled=False)
    torch._dynamo.reset()
    counters.clear()
    compiled = _train_few_steps(tiny_chain / "data/tokens", tmp_path, compiled=True)
    assert counters["stats"]["unique_graphs"] >= 1  # the step really ran through Dynamo and Inductor ...
    assert not counters["graph_break"], dict(counters["graph_break"])  # ... as one graph: no eager stretches on a GPU
    # Inductor's fused kernels sum in another order than eager's: fp32 rounding, ~1e-7 relative per op. Adam moves a
    # weight by about lr (1e-3) a step whatever its gradient's size, so a wrong gradient or mask shows at ~1e-3, far
    # above the 1e-5 allowed. Measured with this model on random tokens: equal losses, weights within 8e-7.
    a, b = eager.curve[-1]["train_loss"], compiled.curve[-1]["train_loss"]
    assert math.isfinite(b) and b == pytest.approx(a, rel=1e-4)
    for name, weight in eager.model.state_dict().items():
        torch.testing.assert_close(compiled.model.state_dict()[name], weight, rtol=0, atol=1e-5, msg=name)


def _is_flat_numeric(figures: dict) -> bool:
    """The metrics convention: one level, finite int or float values (bools are ints to Python, not to DVC)."""
    return all(isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
               for value in figures.values())


def test_metrics_are_flat_numbers_and_the_model_directory_holds_the_model_only(tiny_chain):
    metrics = json.loads((tiny_chain / "metrics/transformer.json").read_text())
    assert metrics.pop("profile") == "embedded" and _is_flat_numeric(metrics) and {"val_accuracy_0.5", "tokens_per_s", "parameters", "best_step"} <= set(metrics)
    summary = json.loads((tiny_chain / "metrics/transformer_summary.json").read_text())
    assert summary["eval_mask_ratios"] == [0.25, 0.5, 0.75] and summary["runtime"]["device"] == "cpu"
    saved = json.loads((tiny_chain / "models/transformer" / CONFIG).read_text())
    assert set(saved) == {"model", "steps"} and saved["steps"] == 20  # nothing measured: no metrics, no timings


def test_the_same_training_gives_a_byte_identical_model_directory(tiny_chain, tmp_path, monkeypatch):
    # What lets a second `dvc repro` after an unchanged `dvc repro -f train_transformer` find everything downstream
    # up to date: the out's bytes depend on the tokens and params alone (same machine, same number of threads).
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")  # one store: created once
    directories = []
    for name in ("first", "second"):
        _project(tiny_chain, tmp_path / name, {"steps": 10, "eval_every": 10})
        monkeypatch.chdir(tmp_path / name)
        train_stage.main("params.yaml")  # in this process: a second interpreter start would double the test's time
        model_dir = tmp_path / name / "models/transformer"
        directories.append({path.name: sha256_file(path) for path in sorted(model_dir.iterdir())})
    assert directories[0] == directories[1] and set(directories[0]) == {"model.safetensors", CONFIG}
    first, second = (json.loads((tmp_path / name / "metrics/transformer.json").read_text()) for name in ("first", "second"))
    assert first["val_accuracy"] == second["val_accuracy"]


def test_the_summary_line_and_the_metrics_file_come_from_typed_results():
    metrics = TransformerMetrics(val={0.25: ValScores(accuracy=0.5, nll=1.0), 0.75: ValScores(accuracy=0.25, nll=3.0)},
                                 baseline_accuracy=0.125, best_val_accuracy=0.4, best_step=10, parameters=2_500_000,
                                 steps=20, processes=2, tokens_per_s=1234.4, tflops_per_s=None, mfu=None)
    assert metrics.flat() == {"val_accuracy_0.25": 0.5, "val_nll_0.25": 1.0, "val_accuracy_0.75": 0.25, "val_nll_0.75": 3.0,
                              "val_accuracy": 0.375, "val_nll": 2.0, "baseline_accuracy": 0.125, "best_val_accuracy": 0.4,
                              "best_step": 10, "parameters": 2_500_000, "steps": 20, "processes": 2, "tokens_per_s": 1234.4}
    prec = runtime.precision("fp32", torch.device("cpu"), runtime.Hardware("cpu", "Test CPU", "AVX2", native_bf16=False))
    out = Path("models/transformer")
    assert train_stage.summary_line(metrics, prec, out) == (
        "train_transformer: 20 steps, 2.50M params, 2 process(es), 1234 tokens/s; val masked-token accuracy 0.500 at 0.25, "
        "0.250 at 0.75 (most-frequent-token baseline 0.125), fp32 on cpu (Test CPU, AVX2, no native bf16) -> models/transformer")
    h100 = runtime.precision("bf16", torch.device("cuda"), runtime.Hardware("cuda", "NVIDIA H100 80GB HBM3", "sm_90", native_bf16=True))
    with_mfu = dataclasses.replace(metrics, tflops_per_s=494.5, mfu=0.5)
    assert "1234 tokens/s, 494.5 TFLOP/s per GPU, MFU 50.0%;" in train_stage.summary_line(with_mfu, h100, out)
    assert with_mfu.flat()["tflops_per_s"] == 494.5 and with_mfu.flat()["mfu"] == 0.5
    b200 = runtime.precision("bf16", torch.device("cuda"), runtime.Hardware("cuda", "NVIDIA B200", "sm_100", native_bf16=True))
    unknown_peak = dataclasses.replace(metrics, tflops_per_s=1200.0)
    assert ("1234 tokens/s, 1200.0 TFLOP/s per GPU, unknown peak (NVIDIA B200 is not in runtime.PEAK_DENSE_FLOPS);"
            in train_stage.summary_line(unknown_peak, b200, out))
    assert train_stage.run_summary(metrics, prec) == {"eval_mask_ratios": [0.25, 0.75], "runtime": prec.facts()}
