"""Presets, overrides and every configuration error a user can make."""

import dataclasses

import pytest
import yaml

from ddpm_lib.config import (PRESET_DIR, Config, available_presets, config_from_dict, diff_configs, load_config,
                             save_config)
from ddpm_lib.errors import ConfigError


def test_all_presets_load_and_validate():
    assert set(available_presets()) >= {"base", "digits", "textures", "dtd_full", "dtd_filtered", "animals10"}
    for name in available_presets():
        cfg = load_config(name)
        assert cfg.name == name
        assert cfg.model.base_channels and cfg.model.channel_mult  # model preset resolved


def test_base_yaml_documents_the_dataclass_defaults():
    raw = yaml.safe_load((PRESET_DIR / "base.yaml").read_text())
    defaults = Config().to_dict()
    defaults.pop("name")
    assert raw == defaults


def test_required_keys_exist():
    cfg = load_config("digits")
    for key in ("data.data_dir", "data.img_size", "train.batch_size", "diffusion.timesteps", "train.epochs",
                "train.lr", "train.ema_decay", "train.ema_sync_every", "data.num_workers"):
        section, name = key.split(".")
        assert hasattr(getattr(cfg, section), name), key


def test_overrides_parse_and_coerce():
    cfg = load_config("digits", ["train.lr=1e-4", "model.channel_mult=[1, 2]", "data.hflip=true",
                                 "train.epochs=3", "data.classes=[one, two]", "data.data_dir=null"])
    assert cfg.train.lr == 1e-4 and isinstance(cfg.train.lr, float)
    assert cfg.model.channel_mult == [1, 2] and cfg.data.hflip is True and cfg.train.epochs == 3
    assert cfg.data.classes == ["one", "two"] and cfg.data.data_dir is None


def test_model_preset_fills_only_unset_fields():
    cfg = load_config("digits", ["model.base_channels=48"])
    assert cfg.model.base_channels == 48 and cfg.model.channel_mult == [1, 2, 2]
    assert load_config("dtd_full").model.base_channels == 128


def test_save_and_reload_round_trip(tmp_path):
    cfg = load_config("textures", ["train.lr=3e-4"])
    save_config(cfg, tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert again == cfg
    assert config_from_dict(cfg.to_dict()) == cfg


def test_diff_configs_names_changed_keys():
    a = load_config("digits").to_dict()
    b = load_config("digits", ["train.lr=5e-4", "data.img_size=8"]).to_dict()
    assert diff_configs(a, b) == ["data.img_size", "train.lr"]


@pytest.mark.parametrize("overrides,words", [
    (["train.lrr=1e-3"], ["unknown config key train.lrr", "did you mean train.lr"]),
    (["trian.lr=1e-3"], ["unknown config key trian", "did you mean train"]),
    (["train.epochs=many"], ["train.epochs expects int", "'many'"]),
    (["train.lr=fast"], ["train.lr expects float"]),
    (["data.hflip=3"], ["data.hflip expects bool"]),
    (["model.channel_mult=2"], ["model.channel_mult expects a list"]),
    (["data.img_size=18"], ["data.img_size=18", "divisible by 4", "try 16"]),
    (["data.img_size=4", "model.channel_mult=[1]"], ["at least 8"]),
    (["diffusion.schedule=quadratic"], ["diffusion.schedule must be one of linear, cosine"]),
    (["train.batch_size=0"], ["train.batch_size must be positive"]),
    (["diffusion.p_uncond=1.5"], ["diffusion.p_uncond must be between 0 and 1"]),
    (["sample.steps=5000"], ["cannot exceed diffusion.timesteps"]),
    (["data.dataset=folder"], ["needs data.data_dir"]),
    (["model.preset=huge"], ["model.preset must be one of tiny, cifar"]),
    (["lr=1"], ["section.key=value"]),
    (["train.lr"], ["section.key=value"]),
])
def test_config_errors_are_one_clear_line(overrides, words):
    with pytest.raises(ConfigError) as err:
        load_config("digits", overrides)
    message = str(err.value)
    assert "\n" not in message
    for word in words:
        assert word in message


def test_img_size_suggestion_is_valid():
    with pytest.raises(ConfigError, match=r"try (\d+)") as err:
        load_config("digits", ["data.img_size=18"])
    suggested = int(err.value.args[0].rsplit("try ", 1)[1])
    load_config("digits", [f"data.img_size={suggested}"])  # the suggestion itself is accepted


def test_unknown_preset_suggests_closest():
    with pytest.raises(ConfigError, match="did you mean 'digits'") as err:
        load_config("digitz")
    assert "available:" in str(err.value)


def test_preset_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("train: 3\n")
    with pytest.raises(ConfigError, match="train must be a mapping"):
        load_config(scalar)


def test_config_is_plain_dataclasses():
    cfg = load_config("digits")
    assert dataclasses.is_dataclass(cfg) and cfg.to_dict()["train"]["lr"] == cfg.train.lr
