import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from maskgit_inpaint.data import images

CLI = str(Path(sys.executable).with_name("maskgit-inpaint"))


def _cli(*args, cwd):
    return subprocess.run([CLI, *args], cwd=cwd, capture_output=True, text=True)


def test_inpaint_one_photograph_of_any_size(tiny_chain, tmp_path):
    photo = tmp_path / "photo.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (45, 70, 3), dtype=np.uint8)).save(photo)
    out = tmp_path / "done.png"
    done = _cli("inpaint", str(photo), str(out), "--schedule", "cosine", "--T", "3", cwd=tiny_chain)
    assert done.returncode == 0, done.stderr
    assert "PSNR in the hole" in done.stdout
    completed = np.asarray(Image.open(out))
    assert completed.shape == (32, 32, 3)
    # Pixels far from the hole are the input's (fitted) pixels.
    fitted = np.asarray(images.fit(Image.open(photo).convert("RGB"), 32))
    assert np.abs(completed[:3].astype(int) - fitted[:3]).max() <= 1


def test_cli_errors_name_the_problem(tiny_chain, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    done = _cli("inpaint", str(text), str(tmp_path / "x.png"), cwd=tiny_chain)
    assert done.returncode != 0 and "notes.txt: cannot decode" in done.stderr
    done = _cli("info", cwd=tmp_path)
    assert done.returncode != 0 and "params.yaml: not found" in done.stderr
    info = _cli("info", cwd=tiny_chain)
    assert info.returncode == 0 and "codebook_size" in info.stdout and "grid: not run yet" in info.stdout
