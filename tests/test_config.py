from pathlib import Path

import pytest
import yaml

from maskgit_inpaint import config

from conftest import ROOT, TINY_PARAMS


def test_repo_params_and_tiny_profile_validate():
    for path in (ROOT / "params.yaml", TINY_PARAMS):
        params = config.load(path)
        assert params.paths.shards == Path("data/shards")


def test_unknown_key_is_named_with_the_file(tmp_path):
    raw = yaml.safe_load(TINY_PARAMS.read_text())
    raw["transformer"]["n_layers"] = 3  # typo of n_layer
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(config.ParamsError) as err:
        config.load(path)
    assert str(path) in str(err.value) and "transformer.n_layers" in str(err.value)


def test_inconsistent_values_are_rejected(tmp_path):
    raw = yaml.safe_load(TINY_PARAMS.read_text())
    raw["transformer"].update(n_embd=30, n_head=4)
    raw["eval"]["schedules"] = ["cosine", "zigzag"]
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(config.ParamsError) as err:
        config.load(path)
    assert "divisible by n_head" in str(err.value) and "zigzag" in str(err.value)


def test_missing_file_says_where_to_run(tmp_path):
    with pytest.raises(config.ParamsError, match="not found"):
        config.load(tmp_path / "nope.yaml")
