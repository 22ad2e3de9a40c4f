import shutil
import subprocess
import sys
from pathlib import Path
from typing import get_args

import pytest
import yaml

from maskgit_inpaint import config

from conftest import ROOT, write_tiny_params


def test_repo_params_and_tiny_profile_validate(tmp_path):
    for path in (ROOT / "params.yaml", write_tiny_params(tmp_path / "tiny.yaml")):
        params = config.load(path)
        assert params.paths.shards == Path("data/shards")


def test_every_value_comes_from_the_params_file(tmp_path):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    del raw["vqgan"]["n_embed"]
    path = tmp_path / "params.yaml"
    shutil.copytree(ROOT / "profiles", tmp_path / "profiles", dirs_exist_ok=True)
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(config.ParamsError, match="vqgan.n_embed: Field required"):
        config.load(path)


def test_unknown_key_is_named_with_the_file(tmp_path):
    raw = yaml.safe_load(write_tiny_params(tmp_path / "tiny.yaml").read_text())
    raw["transformer"]["n_layers"] = 3  # typo of n_layer
    path = tmp_path / "params.yaml"
    shutil.copytree(ROOT / "profiles", tmp_path / "profiles", dirs_exist_ok=True)
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(config.ParamsError) as err:
        config.load(path)
    assert str(path) in str(err.value) and "transformer.n_layers" in str(err.value)


def test_inconsistent_values_are_rejected(tmp_path):
    raw = yaml.safe_load(write_tiny_params(tmp_path / "tiny.yaml").read_text())
    raw["transformer"].update(n_embd=30, n_head=4)
    raw["eval"]["schedules"] = ["cosine", "zigzag"]
    raw["eval"]["masks"] = ["center", "donut"]
    path = tmp_path / "params.yaml"
    shutil.copytree(ROOT / "profiles", tmp_path / "profiles", dirs_exist_ok=True)
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(config.ParamsError) as err:
        config.load(path)
    assert "divisible by n_head" in str(err.value) and "zigzag" in str(err.value) and "donut" in str(err.value)


def test_missing_file_says_where_to_run(tmp_path):
    with pytest.raises(config.ParamsError, match="not found"):
        config.load(tmp_path / "nope.yaml")


def test_param_names_match_the_tables_they_name():
    from maskgit_inpaint import masks, schedules

    assert set(get_args(config.ScheduleName)) == set(schedules.SCHEDULES)
    assert get_args(config.MaskKind) == masks.KINDS


def test_loading_params_imports_no_torch():
    # Every stage loads params: the shard stage (and its spawned workers) must stay free of torch.
    code = "import sys; import stages.shard; from maskgit_inpaint import config; config.load(); print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
