"""Profiles: overlays applied by config.load, switched by `profiles use`, and their values against the references."""
import shutil
from pathlib import Path

import pytest
import yaml

from maskgit_inpaint import config, profiles
from conftest import ROOT, run_ok

REFERENCES = ROOT.parent / "shared" / "REFERENCES.md"

# profile -> [(params key, expected value, the words of ../shared/REFERENCES.md it comes from)]
EXPECTED = {
    "places365": [
        ("data.image_size", 256, "images resized to 256x256"),
        ("vqgan.n_embed", 1024, "VQGAN, 1024 codes, 256x256 -> 16x16"),
        ("vqgan.downsample", 16, "256x256 -> 16x16"),
        ("vqgan.train_parts", {"codebook", "decoder"}, "decoder and codebook are fine-tuned"),
        ("vqgan.lr", 1e-4, "Adam, lr 1e-4"),
        ("transformer.n_layer", 24, "24 layers"),
        ("transformer.n_head", 16, "16 in the official config"),
        ("transformer.n_embd", 768, "768 wide, 3072 MLP"),
        ("transformer.mlp_width", 3072, "768 wide, 3072 MLP"),
        ("transformer.label_smoothing", 0.1, "label\n  smoothing 0.1"),
        ("transformer.betas", (0.9, 0.96), "Adam betas (0.9, 0.96)"),
        ("eval.temperature", 4.5, "choice\n  temperature 4.5"),
        ("eval.T.max", 12, "T = 8-12 steps"),
        ("eval.schedules", {"linear", "cosine", "square", "cubic", "sqrt", "log", "exp"},
         "cosine 6.06 @10, square 6.35 @10, cubic 7.26 @9, linear 7.51 @16"),
        ("eval.masks", {"center", "thin", "medium", "thick", "outpaint"}, "random thin / medium /\n  thick stroke generators"),
        ("eval.fid", True, "metrics FID and LPIPS"),
    ],
    "son2025": [
        ("data.image_size", 256, "images resized to 256x256"),
        ("vqgan.n_embed", 1024, "VQGAN, 1024 codes"),
        ("vqgan.downsample", 16, "16x16 tokens per image"),
        ("vqgan.train_parts", {"codebook", "decoder"}, "decoder and codebook are fine-tuned"),
        ("vqgan.lr", 1e-4, "Adam, lr 1e-4"),
        ("transformer.fixed_mask_ratio", 0.3, "30% of tokens masked at random"),
        ("transformer.batch_size", 32, "batch 32"),
        ("transformer.min_lr", 0.0, "cosine LR annealing"),
        ("eval.masks", {"random_tokens"}, "masking a random\n  subset of tokens (15-30%)"),
        ("eval.random_token_ratio.in_range", (0.15, 0.3), "(15-30%)"),
        ("eval.fid", False, "PSNR 10.64 dB, SSIM 0.1795, LPIPS 0.7637"),
    ],
    "lab03": [
        ("data.image_size", 64, "Images 64x64"),
        ("vqgan.downsample", 4, "f = 4"),
        ("vqgan.n_embed", 1024, "1024 codes, dim 256"),
        ("vqgan.embed_dim", 256, "1024 codes, dim 256"),
        ("transformer.n_embd", 768, "dim 768, 16 heads"),
        ("transformer.n_head", 16, "dim 768, 16 heads"),
        ("transformer.lr", 1e-4, "Adam lr 1e-4, batch 10, cosine decay"),
        ("transformer.batch_size", 10, "Adam lr 1e-4, batch 10, cosine decay"),
        ("transformer.min_lr", 0.0, "cosine decay"),
        ("eval.T", (7,), "Grid at T = 7 total iterations"),
        ("eval.sweet_spots", (3, 5, 7), "| 3 | 29.68"),
        ("eval.schedules", {"linear", "cosine", "square"}, "| sweet spot | linear | cosine | square |"),
        ("eval.temperature", 4.5, "choice\n  temperature 4.5"),
        ("eval.fid", True, "FID (lower is better)"),
    ],
}


def _value(params: config.Params, key: str):
    section, name, *rest = key.split(".")
    p = getattr(params, section)
    if name == "downsample":
        return 2 ** (len(p.ch_mult) - 1)
    if name == "mlp_width":
        return p.mlp_ratio * p.n_embd
    value = getattr(p, name)
    if rest == ["max"]:
        return max(value)
    if rest == ["in_range"]:
        return value
    return set(value) if isinstance(value, tuple) and key in ("vqgan.train_parts", "eval.schedules", "eval.masks") else value


def _project(tmp_path: Path, profile: str) -> Path:
    shutil.copytree(ROOT / "profiles", tmp_path / "profiles")
    text = (ROOT / "params.yaml").read_text()
    path = tmp_path / "params.yaml"
    path.write_text(text)
    profiles.use(profile, path)
    return path


@pytest.mark.parametrize("profile", sorted(EXPECTED))
def test_each_profile_holds_the_reference_settings(tmp_path, profile):
    params = config.load(_project(tmp_path, profile))
    assert params.profile == profile
    references = REFERENCES.read_text() if REFERENCES.is_file() else None
    for key, expected, quote in EXPECTED[profile]:
        if references is not None:
            assert quote in references, f"{REFERENCES} no longer says {quote!r}: check {profile}'s {key}"
        value = _value(params, key)
        if key.endswith(".in_range"):
            assert expected[0] <= value <= expected[1], f"{profile}: {key} = {value}, outside {expected} ({quote!r})"
        else:
            assert value == expected, f"{profile}: {key} = {value!r}, the reference says {expected!r} ({quote!r})"


def test_every_overlay_comments_every_key_it_sets():
    for path in sorted((ROOT / "profiles").glob("*.yaml")):
        for line in path.read_text().splitlines():
            if line.startswith("  ") and not line.lstrip().startswith("#"):
                assert "#" in line, f"{path.name}: {line.split(':')[0].strip()} says nowhere where its value comes from"


def test_the_embedded_profile_changes_nothing(tmp_path):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert raw["profile"] == "embedded"
    assert all(values == {} for values in yaml.safe_load((ROOT / "profiles/embedded.yaml").read_text()).values())


def test_use_keeps_comments_and_leaves_the_file_alone_on_error(tmp_path):
    path = _project(tmp_path, "lab03")
    assert "profile: lab03\n" in path.read_text() and "# One config source" in path.read_text()
    before = path.read_text()
    with pytest.raises(config.ParamsError, match=r"params.yaml: profile 'nope' has no overlay .*profiles/nope.yaml; choose one of \['embedded', 'lab03'"):
        profiles.use("nope", path)
    assert path.read_text() == before and sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml", "profiles"]


@pytest.mark.parametrize("overlay, message", [
    ("paths: {raw: elsewhere}\n", r"unknown or fixed section 'paths'"),
    ("sample: {}\ndata: {}\nvqgan: {}\ntokens: {}\ntransformer: {}\nregistry: {}\n", r"lacks section\(s\) \['eval'\]; write e.g. `eval: \{\}`"),
    ("sample: {}\ndata: {}\nvqgan: {}\ntokens: {}\ntransformer: {}\nregistry: {}\neval: {steps: 3}\n",
     r"params.yaml \+ .*profiles/broken.yaml: invalid params; fix these keys:\n  eval.steps: Extra inputs"),
    ("eval: [1, 2\n", r"broken.yaml: not valid YAML"),
])
def test_a_broken_overlay_names_its_file_and_the_fix(tmp_path, overlay, message):
    path = _project(tmp_path, "embedded")
    (tmp_path / "profiles/broken.yaml").write_text(overlay)
    path.write_text(path.read_text().replace("profile: embedded", "profile: broken"))
    with pytest.raises(config.ParamsError, match=message):
        config.load(path)


def test_an_overlay_replaces_only_its_keys(tmp_path):
    path = _project(tmp_path, "lab03")
    base, lab = config.load(ROOT / "params.yaml"), config.load(path)
    assert lab.eval.T == (7,) and lab.eval.feather == base.eval.feather and lab.paths == base.paths


def test_make_run_switches_the_profile_then_reproduces():
    recipe = run_ok(["make", "-n", "--no-print-directory", "PROFILE=lab03", "run"], ROOT).splitlines()
    assert recipe[-2:] == ["python -m maskgit_inpaint.profiles use lab03", "dvc repro"]
    assert run_ok(["make", "-n", "--no-print-directory", "run"], ROOT).splitlines()[-1:] == ["dvc repro"]
