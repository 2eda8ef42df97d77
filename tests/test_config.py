"""Presets, overrides and every configuration error a user can make."""

import dataclasses
import typing
from pathlib import Path

import pytest
import yaml
from conftest import assert_one_line_error, run_module

from ddpm_lib.config import (MAX_SEED, NUMBER_RANGES, PRESET_DIR, Config, available_presets, config_from_dict,
                             diff_configs, load_config, save_config)
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
    # NaN passes every "<= 0" check and infinity every upper bound: each float must be finite
    (["train.lr=nan"], ["train.lr must be a finite number", "positive", "got nan"]),
    (["train.lr=inf"], ["train.lr must be a finite number", "got inf"]),
    (["train.lr=-inf"], ["train.lr must be a finite number", "got -inf"]),
    (["train.lr=1e999"], ["train.lr must be a finite number", "got inf"]),
    (["train.weight_decay=.nan"], ["train.weight_decay must be a finite number", ">= 0", "got nan"]),
    (["train.grad_clip=inf"], ["train.grad_clip must be a finite number", "got inf"]),
    (["train.ema_decay=nan"], ["train.ema_decay must be a finite number", "between 0 and 1", "got nan"]),
    (["train.lr_min_ratio=nan"], ["train.lr_min_ratio must be a finite number", "got nan"]),
    (["diffusion.p_uncond=nan"], ["diffusion.p_uncond must be a finite number", "got nan"]),
    (["model.dropout=nan"], ["model.dropout must be a finite number", "got nan"]),
    (["sample.eta=nan"], ["sample.eta must be a finite number", "got nan"]),
    (["sample.guidance_scale=nan"], ["sample.guidance_scale must be a finite number", "got nan"]),
    (["sample.guidance_scale=inf"], ["sample.guidance_scale must be a finite number", "got inf"]),
    # negative values that used to train or sample silently, and seeds numpy cannot take
    (["train.weight_decay=-0.1"], ["train.weight_decay must be >= 0", "got -0.1"]),
    (["train.grad_clip=-1"], ["train.grad_clip must be >= 0", "0 for no clipping", "got -1"]),
    (["sample.guidance_scale=-1"], ["sample.guidance_scale must be >= 0", "got -1"]),
    (["train.seed=-1"], ["train.seed must be a whole number from 0 to 2147483647", "got -1"]),
    (["train.seed=4294967296"], ["train.seed must be a whole number from 0", "got 4294967296"]),
    ([f"train.seed={MAX_SEED + 1}"], ["train.seed must be a whole number from 0", f"got {MAX_SEED + 1}"]),
    (["sample.seed=-1"], ["sample.seed must be a whole number from 0 to 2147483647", "got -1"]),
    (["sample.seed=4294967296"], ["sample.seed must be a whole number from 0", "got 4294967296"]),
    # U-Net shapes and class lists that built a broken model or dataset
    (["model.channel_mult=[]"], ["model.channel_mult is empty", "e.g. [1, 2, 2]"]),
    (["model.channel_mult=[1, 0]"], ["model.channel_mult=[1, 0] must hold positive numbers only", "got 0"]),
    (["model.channel_mult=[2, -1]"], ["model.channel_mult=[2, -1] must hold positive", "got -1"]),
    (["model.attn_resolutions=[0]"], ["model.attn_resolutions=[0] must hold positive numbers only", "got 0"]),
    (["model.attn_resolutions=[8, -4]"], ["model.attn_resolutions=[8, -4] must hold positive", "got -4"]),
    (["model.num_heads=0"], ["model.num_heads must be positive", "got 0"]),
    (["data.classes=[one, two, one]"], ["data.classes=['one', 'two', 'one']", "lists 'one' twice", "once"]),
    (["data.classes=['', two]"], ["data.classes=['', 'two'] holds an empty name", "remove it"]),
    (["data.classes=['  ']"], ["data.classes=['  '] holds an empty name"]),
    (["data.classes=[]"], ["data.classes is an empty list", "use null"]),
    (["diffusion.timesteps=1", "sample.steps=1"], ["diffusion.timesteps must be at least 2", "try 1000", "got 1"]),
    (["diffusion.timesteps=0", "sample.steps=1"], ["diffusion.timesteps must be at least 2", "got 0"]),
    (["model.channel_mult=[1,2"], ["override 'model.channel_mult=[1,2'", "not valid YAML"]),
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


def test_yaml_syntax_error_names_file_line_and_column(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data:\n  img_size: 16\n   per_class: 3\n")  # line 3: indented under a scalar
    with pytest.raises(ConfigError) as err:
        load_config(bad)
    assert str(err.value) == f"{bad}:3:13: not valid YAML: mapping values are not allowed here"
    unclosed = tmp_path / "unclosed.yaml"
    unclosed.write_text("train:\n  lr: [1, 2\n")
    with pytest.raises(ConfigError) as err:
        load_config(unclosed)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{unclosed}:3:1: not valid YAML: expected ',' or ']'")
    assert "flow sequence that starts at line 2, column 7" in message
    control = tmp_path / "control.yaml"
    control.write_text("train:\n  lr: \x01\n")
    with pytest.raises(ConfigError, match=r"control\.yaml:2:7: not valid YAML: character #x0001 is not allowed"):
        load_config(control)


def test_override_value_that_is_not_yaml_is_one_line():
    with pytest.raises(ConfigError) as err:
        load_config("digits", ["model.channel_mult=[1,2"])
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("override 'model.channel_mult=[1,2': the value is not valid YAML: expected ',' or ']'")
    assert "[1, 2, 2]" in message  # the fix: what a list looks like


def test_unreadable_config_file_is_one_line(tmp_path, monkeypatch):
    folder = tmp_path / "folder.yaml"
    folder.mkdir()
    with pytest.raises(ConfigError, match=r"folder\.yaml cannot be read \(Is a directory\)"):
        load_config(folder)
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes("name: caf\u00e9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1\.yaml cannot be read .*utf-8.*; give a readable UTF-8 YAML file"):
        load_config(latin1)
    locked = tmp_path / "locked.yaml"
    locked.write_text("train:\n  lr: 1.0e-3\n")

    def refuse(self, *args, **kwargs):  # chmod 000 does not stop root, so refuse the read itself
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_text", refuse)
    with pytest.raises(ConfigError, match=r"locked\.yaml cannot be read \(Permission denied\)"):
        load_config(locked)


def test_train_cli_refuses_nan_lr_before_creating_anything(tmp_path):
    proc = run_module("train", "--set", "train.lr=nan", cwd=tmp_path)
    assert_one_line_error(proc, "train.lr must be a finite number", "got nan")
    assert not (tmp_path / "runs").exists()


def test_every_number_has_a_range():
    """A new int or float key must get a rule in NUMBER_RANGES (seeds have check_seed)."""
    for section, cls in typing.get_type_hints(Config).items():
        if not dataclasses.is_dataclass(cls):
            continue
        for name, hint in typing.get_type_hints(cls).items():
            numeric = {int, float} & {hint, *typing.get_args(hint)}
            if numeric and name != "seed":
                assert f"{section}.{name}" in NUMBER_RANGES, f"{section}.{name}"


def test_boundary_values_are_accepted():
    cfg = load_config("digits", ["train.grad_clip=0", "sample.guidance_scale=0", "train.weight_decay=0",
                                 f"train.seed={MAX_SEED}", f"sample.seed={MAX_SEED}", "diffusion.timesteps=2",
                                 "sample.steps=2", "model.attn_resolutions=[]"])
    assert (cfg.train.grad_clip, cfg.sample.guidance_scale, cfg.train.seed) == (0.0, 0.0, MAX_SEED)
    assert cfg.diffusion.timesteps == 2 and cfg.model.attn_resolutions == []


def test_deterministic_is_off_by_default_and_settable():
    assert load_config("digits").train.deterministic is False
    assert load_config("digits", ["train.deterministic=true"]).train.deterministic is True


def test_config_is_plain_dataclasses():
    cfg = load_config("digits")
    assert dataclasses.is_dataclass(cfg) and cfg.to_dict()["train"]["lr"] == cfg.train.lr


def test_zero_terminal_snr_needs_v_prediction():
    with pytest.raises(ConfigError, match="diffusion.prediction=v"):
        load_config("digits", ["diffusion.zero_terminal_snr=true", "diffusion.prediction=eps"])
    cfg = load_config("digits", ["diffusion.zero_terminal_snr=true", "diffusion.prediction=v"])
    assert cfg.diffusion.zero_terminal_snr and cfg.diffusion.prediction == "v"


@pytest.mark.parametrize("item, problem", [("diffusion.prediction=x0", "diffusion.prediction must be one of eps, v"),
                                           ("diffusion.loss_weight=snr", "diffusion.loss_weight must be one of"),
                                           ("diffusion.t_sampling=beta", "diffusion.t_sampling must be one of"),
                                           ("diffusion.min_snr_gamma=0", "diffusion.min_snr_gamma must be positive")])
def test_lever_values_are_checked(item, problem):
    with pytest.raises(ConfigError, match=problem):
        load_config("digits", [item])
