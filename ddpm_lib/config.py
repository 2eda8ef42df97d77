"""Configuration: typed dataclasses, YAML presets and ``--set key=value`` overrides.

A run is described by one :class:`Config`, built in three layers::

    dataclass defaults  <-  ddpm_lib/configs/<preset>.yaml  <-  --set section.key=value

Every key is checked: an unknown key gets the closest valid one suggested, a value
of the wrong type is named with the type expected, a number must be finite and in its
range (:data:`NUMBER_RANGES`), and cross-field rules (the image
size must divide by the U-Net's downsampling factor) are checked before any work
starts. The resolved config is saved as ``config.yaml`` in the run directory, and in
every checkpoint, so a checkpoint alone rebuilds its model.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError

PRESET_DIR = Path(__file__).parent / "configs"

# Seeds live in [0, MAX_SEED]: numpy's legacy seeding takes < 2**32 and training adds the rank
# (and sampling the chunk index) to the seed, so half that range leaves room for both.
MAX_SEED = 2**31 - 1


def check_seed(seed: int, what: str = "seed") -> int:
    """``seed`` if it is an int in ``[0, MAX_SEED]``; otherwise a one-line :class:`ConfigError`."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise ConfigError(f"{what} must be a whole number from 0 to {MAX_SEED}; got {seed!r}")
    return seed


@dataclass
class DataConfig:
    dataset: str = "digits"  # digits | textures | folder
    data_dir: str | None = None  # root/<class>/<image> tree, for dataset=folder
    classes: list[str] | None = None  # keep only these class folders (None = all)
    img_size: int = 16
    per_class: int = 400  # textures: images generated per class
    hflip: bool = False  # random horizontal flips while training
    num_workers: int = 0  # DataLoader worker processes (0: load in the training process)


@dataclass
class ModelConfig:
    preset: str = "tiny"  # tiny | cifar: fills the fields below that are left unset
    base_channels: int | None = None
    channel_mult: list[int] | None = None
    num_res_blocks: int | None = None
    attn_resolutions: list[int] | None = None  # feature-map sizes that get self-attention
    num_heads: int | None = None
    dropout: float | None = None


@dataclass
class DiffusionConfig:
    schedule: str = "cosine"  # linear | cosine
    timesteps: int = 1000
    p_uncond: float = 0.1  # label dropout for classifier-free guidance
    prediction: str = "v"  # what the network predicts: v (Salimans & Ho 2022) | eps (Ho et al. 2020)
    loss_weight: str = "uniform"  # uniform (Ho's L_simple) | min_snr (Hang et al. 2023)
    min_snr_gamma: float = 5.0  # the gamma of min_snr: weights are capped at SNR = gamma
    t_sampling: str = "uniform"  # training steps drawn uniform | logit_normal (Esser et al. 2024)
    zero_terminal_snr: bool = False  # rescale so x_T is pure noise (Lin et al. 2024); needs prediction v


@dataclass
class TrainConfig:
    batch_size: int = 64  # per rank
    epochs: int = 50
    max_steps: int = 0  # stop after this many optimizer steps (0: train all epochs)
    lr: float = 1e-3
    lr_warmup_steps: int = 100
    lr_schedule: str = "cosine"  # constant | cosine (decay to lr_min_ratio * lr)
    lr_min_ratio: float = 0.1
    weight_decay: float = 0.0
    grad_clip: float = 1.0  # max gradient norm (0: no clipping)
    ema_decay: float = 0.999
    ema_warmup: bool = True
    ema_sync_every: int = 100
    seed: int = 0
    log_every: int = 25
    snapshot_every: int = 500
    threads: int = 0  # torch CPU threads per rank (0: this machine's cores / ranks on it)
    device: str = "auto"  # auto (GPU if any) | cuda | cpu
    amp: str = "auto"  # auto (bf16 on GPUs that support it, else none) | bf16 | fp16 | none
    deterministic: bool = False  # deterministic GPU kernels: repeatable runs, slower (README, Reliability)


@dataclass
class SampleConfig:
    sampler: str = "ddim"  # ddpm | ddim
    steps: int = 50  # DDIM steps (DDPM always runs the full chain)
    eta: float = 0.5  # 0 = deterministic DDIM; 0.5 cut speckled digits from 11.8% to 1.0% (scripts/speckle.py)
    guidance_scale: float = 1.25  # the lowest domain FID at >= 99% class accuracy on digits (scripts/bench.py)
    per_class: int = 8
    batch_size: int = 256
    seed: int = 0


@dataclass
class Config:
    name: str = "base"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


CHOICES = {
    "data.dataset": ("digits", "textures", "folder"),
    "model.preset": ("tiny", "cifar"),
    "diffusion.schedule": ("linear", "cosine"),
    "diffusion.prediction": ("eps", "v"),
    "diffusion.loss_weight": ("uniform", "min_snr"),
    "diffusion.t_sampling": ("uniform", "logit_normal"),
    "train.lr_schedule": ("constant", "cosine"),
    "train.device": ("auto", "cuda", "cpu"),
    "train.amp": ("auto", "bf16", "fp16", "none"),
    "sample.sampler": ("ddpm", "ddim"),
}


def available_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def load_config(preset: str | Path = "base", overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Build a validated :class:`Config` from a preset name (or a YAML path) and overrides.

    ``overrides`` are ``"section.key=value"`` strings; values are parsed as YAML
    (``[1, 2, 2]``, ``true``, ``null``) and then checked against the key's type.
    """
    raw = _read_preset(preset)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or "." not in key:
            raise ConfigError(f"override {item!r} must look like section.key=value, e.g. train.lr=1e-4")
        section, _, name = key.strip().partition(".")
        raw.setdefault(section, {})
        if not isinstance(raw[section], dict):
            raise ConfigError(f"override {item!r}: {section!r} is not a section")
        raw[section][name] = _parse_override_value(item, value)
    return config_from_dict(raw)


# Keys added after runs were first saved, with the value that reproduces how those runs were trained.
# A checkpoint's config holds every key of its time, so one that lacks such a key predates it; read
# with today's default (v-prediction) an eps-trained network would sample noise.
VALUE_BEFORE_KEY_EXISTED = {"diffusion.prediction": "eps", "diffusion.loss_weight": "uniform",
                            "diffusion.min_snr_gamma": 5.0, "diffusion.t_sampling": "uniform",
                            "diffusion.zero_terminal_snr": False}


def saved_config(raw: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's config dict with :data:`VALUE_BEFORE_KEY_EXISTED` filled in where it lacks a key
    (anything but a dict is returned as it is, for :func:`config_from_dict` to refuse)."""
    if not isinstance(raw, dict):
        return raw
    raw = {section: dict(values) if isinstance(values, dict) else values for section, values in raw.items()}
    for dotted, value in VALUE_BEFORE_KEY_EXISTED.items():
        section, name = dotted.split(".")
        if isinstance(raw.get(section), dict):
            raw[section].setdefault(name, value)
    return raw


def config_from_dict(raw: dict[str, Any]) -> Config:
    """Validate a nested dict (as read from YAML or a checkpoint) into a :class:`Config`."""
    cfg = _build(Config, raw, prefix="")
    _resolve_model_preset(cfg.model)
    validate(cfg)
    return cfg


def config_yaml(cfg: Config) -> str:
    """The resolved config as the YAML text of a run's ``config.yaml``."""
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(config_yaml(cfg))


def diff_configs(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested config dicts."""
    keys = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            keys += diff_configs(va, vb, prefix + k + ".")
        elif va != vb:
            keys.append(prefix + k)
    return keys


def validate(cfg: Config) -> None:
    """The checks a type check cannot do: choices, number ranges (floats finite), seeds, cross-field rules."""
    for dotted, allowed in CHOICES.items():
        section, name = dotted.split(".")
        value = getattr(getattr(cfg, section), name)
        if value not in allowed:
            raise ConfigError(f"{dotted} must be one of {', '.join(allowed)}; got {value!r}")
    d, m, t = cfg.data, cfg.model, cfg.train
    if d.dataset == "folder" and not d.data_dir:
        raise ConfigError("data.dataset=folder needs data.data_dir (set it with --set data.data_dir=PATH)")
    _check_class_names(d.classes)
    _check_model_lists(m)
    factor = 2 ** (len(m.channel_mult) - 1)
    if d.img_size < 8 or d.img_size % factor:
        suggestion = max(factor * -(-8 // factor), round(d.img_size / factor) * factor)
        raise ConfigError(
            f"data.img_size={d.img_size} must be at least 8 and divisible by {factor}, the U-Net's "
            f"downsampling factor for model.channel_mult={m.channel_mult}; try {suggestion}"
        )
    _check_finite(cfg)
    for key, (allows, rule) in NUMBER_RANGES.items():
        value = _lookup(cfg, key)
        if not allows(value):
            raise ConfigError(f"{key} must be {rule}; got {value}")
    if m.base_channels % m.num_heads:
        raise ConfigError(f"model.base_channels={m.base_channels} must be divisible by model.num_heads={m.num_heads}")
    if cfg.diffusion.zero_terminal_snr and cfg.diffusion.prediction != "v":
        raise ConfigError("diffusion.zero_terminal_snr=true leaves no signal at the last step, where an eps "
                          "prediction cannot give x_0; set diffusion.prediction=v as well (Lin et al. 2024)")
    if cfg.sample.steps > cfg.diffusion.timesteps:
        raise ConfigError(f"sample.steps={cfg.sample.steps} cannot exceed diffusion.timesteps={cfg.diffusion.timesteps}")
    check_seed(t.seed, "train.seed")
    check_seed(cfg.sample.seed, "sample.seed")


# The schedules need a first and a last step: with T = 1 the linear schedule's only beta is
# 0.1 (x_T keeps 95% of the image, so sampling from pure noise is wrong) and
# NoiseSchedule.posterior_log_variance_clipped comes out empty.
MIN_TIMESTEPS = 2

# What each number accepts: (test, the rule as the error message words it).
_POSITIVE = (lambda v: v > 0, "positive")
_AT_LEAST_0 = (lambda v: v >= 0, ">= 0")
_FRACTION = (lambda v: 0 <= v <= 1, "between 0 and 1")
NUMBER_RANGES = {
    "data.img_size": _POSITIVE, "data.per_class": _POSITIVE, "data.num_workers": _AT_LEAST_0,
    "model.base_channels": _POSITIVE, "model.num_res_blocks": _POSITIVE, "model.num_heads": _POSITIVE,
    "model.dropout": _FRACTION,
    "diffusion.timesteps": (lambda v: v >= MIN_TIMESTEPS, f"at least {MIN_TIMESTEPS} (try 1000, as in DDPM)"),
    "diffusion.p_uncond": _FRACTION, "diffusion.min_snr_gamma": _POSITIVE,
    "train.batch_size": _POSITIVE, "train.epochs": _POSITIVE, "train.max_steps": _AT_LEAST_0,
    "train.lr": _POSITIVE, "train.lr_warmup_steps": _AT_LEAST_0, "train.lr_min_ratio": _FRACTION,
    "train.weight_decay": _AT_LEAST_0, "train.grad_clip": (_AT_LEAST_0[0], ">= 0, 0 for no clipping"),
    "train.ema_decay": _FRACTION, "train.ema_sync_every": _AT_LEAST_0, "train.log_every": _POSITIVE,
    "train.snapshot_every": _POSITIVE, "train.threads": _AT_LEAST_0,
    "sample.steps": _POSITIVE, "sample.eta": _FRACTION, "sample.guidance_scale": _AT_LEAST_0,
    "sample.per_class": _POSITIVE, "sample.batch_size": _POSITIVE,
}


def _lookup(cfg: Config, dotted: str) -> Any:
    """The value of ``section.key`` in ``cfg``."""
    section, name = dotted.split(".")
    return getattr(getattr(cfg, section), name)


def _check_finite(cfg: Config) -> None:
    """Refuse NaN and infinity in every float field: NaN passes any range check (``nan <= 0`` is False)."""
    for section in dataclasses.fields(cfg):
        sub = getattr(cfg, section.name)
        if not dataclasses.is_dataclass(sub):
            continue
        for f in dataclasses.fields(sub):
            value = getattr(sub, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                key = f"{section.name}.{f.name}"
                rule = f" ({NUMBER_RANGES[key][1]})" if key in NUMBER_RANGES else ""
                raise ConfigError(f"{key} must be a finite number{rule}; got {value}")


def _check_class_names(classes: list[str] | None) -> None:
    """``data.classes`` is null or a list of distinct, non-blank names."""
    if classes is None:
        return
    if not classes:
        raise ConfigError("data.classes is an empty list; use null to keep every class")
    if any(not name.strip() for name in classes):
        raise ConfigError(f"data.classes={classes} holds an empty name; remove it")
    repeated = [name for i, name in enumerate(classes) if name in classes[:i]]
    if repeated:
        raise ConfigError(f"data.classes={classes} lists {repeated[0]!r} twice; list each class once")


def _check_model_lists(m: ModelConfig) -> None:
    """``model.channel_mult`` has at least one level; both size lists hold positive numbers only."""
    if not m.channel_mult:
        raise ConfigError("model.channel_mult is empty; give one channel multiplier per U-Net level, e.g. [1, 2, 2]")
    for key, values in (("model.channel_mult", m.channel_mult), ("model.attn_resolutions", m.attn_resolutions)):
        bad = [v for v in values if v <= 0]
        if bad:
            raise ConfigError(f"{key}={values} must hold positive numbers only; got {bad[0]}")


def _read_preset(preset: str | Path) -> dict[str, Any]:
    path = Path(preset)
    if path.suffix not in (".yaml", ".yml"):
        path = PRESET_DIR / f"{preset}.yaml"
        if not path.exists():
            names = available_presets()
            close = difflib.get_close_matches(str(preset), names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"unknown preset {str(preset)!r}{hint}; available: {', '.join(names)}")
    elif not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        raise ConfigError(f"config file {path} cannot be read ({reason}); give a readable UTF-8 YAML file") from None
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}:{_yaml_error_where(err, text)} not valid YAML: {_yaml_problem(err)}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping of sections, not {type(raw).__name__}")
    raw.setdefault("name", path.stem)
    return raw


def _parse_override_value(item: str, value: str) -> Any:
    """The YAML value of the override ``item`` (``value`` is its part after ``=``; empty means null)."""
    if not value.strip():
        return None
    try:
        return yaml.safe_load(value)
    except yaml.YAMLError as err:
        raise ConfigError(f"override {item!r}: the value is not valid YAML: {_yaml_problem(err)}; check its "
                          "brackets and quotes (a list: [1, 2, 2]; text with YAML symbols: 'quoted')") from None


def _yaml_error_where(err: yaml.YAMLError, text: str) -> str:
    """``"line:column:"`` (1-based) where PyYAML found ``err`` in ``text``, or ``""`` if it does not say."""
    mark = getattr(err, "problem_mark", None)
    if mark is not None:
        return f"{mark.line + 1}:{mark.column + 1}:"
    if isinstance(err, yaml.reader.ReaderError):  # a control character: PyYAML gives its offset only
        before = text[:err.position]
        return f"{before.count(chr(10)) + 1}:{err.position - before.rfind(chr(10))}:"
    return ""


def _yaml_problem(err: yaml.YAMLError) -> str:
    """PyYAML's description of ``err`` on one line, without its multi-line source excerpt."""
    if isinstance(err, yaml.reader.ReaderError):
        code = err.character if isinstance(err.character, int) else ord(err.character)
        return f"character #x{code:04x} is not allowed ({err.reason})"
    problem = getattr(err, "problem", None)
    if problem is None:
        return " ".join(str(err).split())
    context, mark = getattr(err, "context", None), getattr(err, "context_mark", None)
    if context and mark is not None:
        return f"{problem} ({context} that starts at line {mark.line + 1}, column {mark.column + 1})"
    return f"{problem} ({context})" if context else problem


def _build(cls: type, raw: Any, prefix: str) -> Any:
    """Instantiate dataclass ``cls`` from ``raw`` with every key and type checked."""
    where = prefix.rstrip(".") or "config"
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a mapping of keys, got {raw!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    values = {}
    for key, value in raw.items():
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f"; did you mean {prefix}{close[0]}?" if close else f"; valid keys: {', '.join(fields)}"
            raise ConfigError(f"unknown config key {prefix}{key}{hint}")
        hint_type = hints[key]
        if dataclasses.is_dataclass(hint_type):
            values[key] = _build(hint_type, value, prefix + key + ".")
        else:
            values[key] = _coerce(value, hint_type, prefix + key)
    return cls(**values)


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Check ``value`` against a field's type, converting the obvious (``"1e-4"`` -> float)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(value, inner, key)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} expects a list like [1, 2], got {value!r}")
        return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    expected = hint.__name__
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif hint is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
    raise ConfigError(f"{key} expects {expected}, got {value!r} ({type(value).__name__})")


MODEL_PRESETS: dict[str, dict[str, Any]] = {
    # 1.19M parameters (digits): a laptop CPU trains it on the embedded datasets in minutes.
    "tiny": dict(base_channels=32, channel_mult=[1, 2, 2], num_res_blocks=1,
                 attn_resolutions=[8], num_heads=1, dropout=0.0),
    # 38.3M parameters at 32 px: about the DDPM CIFAR-10 U-Net (Ho et al. 2020, 35.7M), for GPUs.
    "cifar": dict(base_channels=128, channel_mult=[1, 2, 2, 2], num_res_blocks=2,
                  attn_resolutions=[16], num_heads=1, dropout=0.1),
}


def _resolve_model_preset(model: ModelConfig) -> None:
    if model.preset not in MODEL_PRESETS:
        raise ConfigError(f"model.preset must be one of {', '.join(MODEL_PRESETS)}; got {model.preset!r}")
    for key, value in MODEL_PRESETS[model.preset].items():
        if getattr(model, key) is None:
            setattr(model, key, value)
