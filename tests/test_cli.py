"""The `maskgit-inpaint` console script on real picture files, run as a user runs it, from the tiny chain's directory."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from maskgit_inpaint import cli, config, inpaint

from conftest import ROOT

CLI = str(Path(sys.executable).with_name("maskgit-inpaint"))


def _cli(*args, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, *map(str, args)], cwd=cwd, capture_output=True, text=True)


def _ok(*args, cwd) -> str:
    done = _cli(*args, cwd=cwd)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _photo(width: int, height: int, seed: int = 0) -> np.ndarray:
    """(H, W, 3) uint8: smooth colour gradients plus sensor-like noise."""
    yy, xx = np.mgrid[0:height, 0:width] / max(width, height)
    smooth = np.stack([200 * xx + 30, 180 * yy + 40, 120 + 60 * np.sin(6 * xx) * np.cos(4 * yy)], -1)
    noisy = smooth + np.random.default_rng(seed).normal(0, 6, smooth.shape)
    return np.clip(noisy, 0, 255).astype(np.uint8)


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img)


def _assert_completed(before: np.ndarray, after: np.ndarray, hole: np.ndarray) -> None:
    """Every known pixel exactly as it was; the hole filled with something else."""
    assert after.shape == before.shape
    assert np.array_equal(after[~hole], before[~hole])
    assert (after[hole] != before[hole]).reshape(hole.sum(), -1).any(1).mean() > 0.5


def _kind_hole(chain: Path, kind: str, size: tuple[int, int]) -> np.ndarray:
    """The hole `--kind kind` draws over a picture of `size` with the chain's models and params."""
    p = config.load(chain / "params.yaml").eval
    vqgan = json.loads((chain / "models" / "vqgan" / "config.json").read_text())["model"]
    return inpaint.hole_of_kind(kind, size, resolution=vqgan["resolution"], f=2 ** (len(vqgan["ch_mult"]) - 1), seed=p.seed,
                                token_ratio=p.random_token_ratio)


def test_a_large_jpeg_is_completed_at_full_size_with_the_params_settings(tiny_chain, tmp_path):
    photo, out = tmp_path / "photo.jpg", tmp_path / "done.png"
    Image.fromarray(_photo(3000, 2000)).save(photo, quality=90)
    stdout = _ok("inpaint", photo, "-o", out, "--box", "1200,800,400,300", cwd=tiny_chain)
    _assert_completed(_pixels(photo), _pixels(out), inpaint.hole_from_box("1200,800,400,300", (3000, 2000)))
    p = config.load(tiny_chain / "params.yaml").eval
    assert f"settings: {p.schedules[0]} T={max(p.T)} k={max(p.T)}" in stdout and "params.yaml (eval): no grid has run" in stdout
    assert "embedded sample" in stdout and "data.source" in stdout  # the training note
    summary = stdout.splitlines()[-1]
    assert summary.startswith(f"inpaint: {photo} 3000x2000 RGB, box 1200,800,400,300 hides 2.0%, window 800x800 at (1000,550)")
    assert f"-> {out} (PNG 3000x2000 RGB) in " in summary and summary.endswith(" s")


def test_a_transparent_picture_with_a_smaller_mask_overrides_and_steps(tiny_chain, tmp_path):
    picture, mask, out, steps = tmp_path / "logo.png", tmp_path / "mask.png", tmp_path / "done.png", tmp_path / "steps"
    rgba = np.dstack([_photo(120, 90), np.tile(np.linspace(40, 255, 120).astype(np.uint8), (90, 1))])
    Image.fromarray(rgba, "RGBA").save(picture)
    painted = np.zeros((30, 40, 4), np.uint8)
    painted[10:20, 8:30] = 255  # white, opaque, on transparent
    Image.fromarray(painted, "RGBA").save(mask)
    stdout = _ok("inpaint", picture, "-o", out, "--mask", mask, "--schedule", "cosine", "--T", "2", "--sweet-spot", "1",
                 "--seed", "5", "--save-steps", steps, cwd=tiny_chain)
    hole = inpaint.hole_from_mask(Image.open(mask), (120, 90), "mask.png")
    assert hole.mean() > 0.1
    _assert_completed(rgba, _pixels(out), hole)
    assert Image.open(out).mode == "RGBA" and (_pixels(out)[hole][:, 3] == 255).all()
    assert f"the mask {mask} is 40x30 and the image 120x90: the mask was resized" in stdout
    assert "settings: cosine T=2 k=1" in stdout and "seed 5" in stdout
    assert "for thick holes" in stdout and "overridden: schedule=cosine, T=2, sweet_spot=1, seed=5" in stdout
    assert sorted(f.name for f in steps.iterdir()) == ["step_01.png", "step_02.png", "steps.png"]
    assert np.array_equal(_pixels(steps / "step_01.png"), _pixels(out))  # k = 1: the output is step 1
    _assert_completed(rgba, _pixels(steps / "step_02.png"), hole)
    assert Image.open(steps / "steps.png").height == cli.STRIP_HEIGHT and f"{steps / 'steps.png'}" in stdout


def test_a_grayscale_picture_in_a_workspace_whose_grid_ran_gets_the_grid_pick(tiny_chain, tmp_path):
    """--models DIR beside a workspace with metrics/eval_summary.json (the committed grid's, real shape)."""
    workspace = tmp_path / "workspace"
    (workspace / "metrics").mkdir(parents=True)
    shutil.copy(tiny_chain / "params.yaml", workspace / "params.yaml")
    shutil.copytree(tiny_chain / "profiles", workspace / "profiles")
    shutil.copy(ROOT / "metrics" / "eval_summary.json", workspace / "metrics" / "eval_summary.json")
    gray, out = tmp_path / "gray.png", tmp_path / "done.png"
    Image.fromarray(_photo(96, 64)[..., 1]).save(gray)
    stdout = _ok("inpaint", gray, "-o", out, "--kind", "thick", "--models", tiny_chain / "models", cwd=workspace)
    _assert_completed(_pixels(gray), _pixels(out), _kind_hole(tiny_chain, "thick", (96, 64)))
    assert Image.open(out).mode == "L"
    picks = json.loads((ROOT / "metrics" / "eval_summary.json").read_text())["masks"]["thick"]["picks"]
    metric = next(m for m in inpaint.PICK_ORDER if m in picks)
    cell = picks[metric]["cell"]
    assert f"settings: {cell['schedule']} T={cell['T']} k={cell['sweet_spot']}" in stdout
    assert f"the grid's held-out pick for thick holes by {metric}" in stdout


def test_a_picture_smaller_than_the_model_gets_the_default_center_hole(tiny_chain, tmp_path):
    tiny, out = tmp_path / "tiny.png", tmp_path / "done.png"
    Image.fromarray(_photo(10, 10)).save(tiny)
    stdout = _ok("inpaint", tiny, "-o", out, cwd=tiny_chain)
    hole = _kind_hole(tiny_chain, "center", (10, 10))
    _assert_completed(_pixels(tiny), _pixels(out), hole)
    assert f"center mask hides {hole.mean():.1%}, window 10x10 at (0,0)" in stdout


def test_an_empty_mask_returns_the_input_and_a_full_one_completes_from_nothing(tiny_chain, tmp_path):
    picture, empty, full = tmp_path / "p.png", tmp_path / "empty.png", tmp_path / "full.png"
    Image.fromarray(_photo(50, 40)).save(picture)
    Image.new("L", (50, 40), 0).save(empty)
    Image.new("L", (50, 40), 255).save(full)
    stdout = _ok("inpaint", picture, "-o", tmp_path / "same.png", "--mask", empty, cwd=tiny_chain)
    assert "the mask hides no pixel: the input is returned unchanged" in stdout and "no window" in stdout
    assert np.array_equal(_pixels(tmp_path / "same.png"), _pixels(picture))
    stdout = _ok("inpaint", picture, "-o", tmp_path / "new.jpg", "--mask", full, cwd=tiny_chain)
    assert "completed from nothing" in stdout
    with Image.open(tmp_path / "new.jpg") as img:
        assert (img.format, img.size, img.mode) == ("JPEG", (50, 40), "RGB")


def test_errors_are_one_line_on_stderr_and_a_nonzero_exit(tiny_chain, tmp_path):
    good = Image.fromarray(_photo(300, 200))
    good.save(tmp_path / "photo.jpg")
    (tmp_path / "cut.jpg").write_bytes((tmp_path / "photo.jpg").read_bytes()[:2000])  # a truncated download
    done = _cli("inpaint", tmp_path / "cut.jpg", "-o", tmp_path / "x.png", cwd=tiny_chain)
    assert done.returncode != 0 and done.stderr.count("\n") == 1 and "cut.jpg: cannot decode as an image" in done.stderr
    untrained = tmp_path / "untrained"
    untrained.mkdir()
    shutil.copy(tiny_chain / "params.yaml", untrained / "params.yaml")
    shutil.copytree(tiny_chain / "profiles", untrained / "profiles")
    done = _cli("inpaint", tmp_path / "photo.jpg", "-o", tmp_path / "x.png", cwd=untrained)
    assert done.returncode != 0 and done.stderr.count("\n") == 1 and "run `dvc repro finetune_vqgan` first" in done.stderr
    assert not (tmp_path / "x.png").exists()


def test_a_usage_mistake_is_one_line_too(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["inpaint", "p.png", "-o", "x.png", "--box", "1,1,2,2", "--kind", "thin"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1 and "argument --kind: not allowed with argument --box" in err


@pytest.mark.parametrize("args, message", [
    (["missing.png", "-o", "x.png"], "missing.png: no such file"),
    (["photo.png", "-o", "x.png", "--mask", "nomask.png"], "nomask.png: no such file"),
    (["photo.png", "-o", "x.png", "--mask", "notes.txt"], "notes.txt: cannot decode as an image"),
    (["photo.png", "-o", "x.png", "--box", "250,150,100,100"], "box 250,150,100,100 does not lie inside the 300x200 image"),
    (["photo.png", "-o", "x.png", "--box", "1,2,3"], "give four integers x,y,w,h"),
    (["photo.png", "-o", "x.png", "--sweet-spot", "9"], "sweet_spot 9 must lie in 1..3"),
    (["photo.png", "-o", "x.png", "--T", "0", "--sweet-spot", "1"], "T=0: decoding needs at least 1 step"),
    (["photo.png", "-o", "x.png", "--schedule", "zigzag"], "schedule 'zigzag' is unknown; choose one of"),
    (["photo.png", "-o", "x.gif"], "x.gif: unknown output format '.gif'"),
    (["photo.png", "-o", "notes.txt/x.png"], "cannot be created, notes.txt is a file"),
    (["photo.png", "-o", "."], ".: is a directory"),
    (["photo.png", "-o", "x.png", "--save-steps", "notes.txt"], "notes.txt: is a file; give a directory path"),
    (["photo.png", "-o", "x.png", "--models", "nowhere"], "nowhere: no such directory; --models takes a directory"),
])
def test_user_mistakes_say_what_to_fix_before_any_work(tiny_chain, tmp_path, monkeypatch, args, message):
    """In process (each subprocess costs seconds of imports): the message main() exits with is what stderr shows."""
    Image.fromarray(_photo(300, 200)).save(tmp_path / "photo.png")
    (tmp_path / "notes.txt").write_text("not an image")
    shutil.copy(tiny_chain / "params.yaml", tmp_path / "params.yaml")
    shutil.copytree(tiny_chain / "profiles", tmp_path / "profiles")
    (tmp_path / "models").symlink_to(tiny_chain / "models")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        cli.main(["inpaint", *args])
    assert isinstance(exit_.value.code, str) and "\n" not in exit_.value.code and message in exit_.value.code
    assert not (tmp_path / "x.png").exists()


def test_info_names_the_models_and_the_missing_params(tiny_chain, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tiny_chain)
    cli.main(["info"])
    info = capsys.readouterr().out
    assert "codebook_size" in info and "grid: not run yet" in info
    with pytest.raises(SystemExit, match="params.yaml: not found"):
        cli.main(["--params", str(tmp_path / "params.yaml"), "info"])
