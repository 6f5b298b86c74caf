"""Typed, validated run configuration: YAML file + ``section.key=value`` overrides.

Every key must be known (a typo is an error, never a silent default), every value is checked
for type and range in one place, and the result is frozen and written beside the outputs.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from robust_hub.errors import RobustHubError

FRACTION = re.compile(r"^\s*(\d+(?:\.\d*)?)\s*/\s*(\d+(?:\.\d*)?)\s*$")


def parse_fraction(text: str) -> float:
    """``8/255``, ``0.031`` or ``1e-3`` as a float; ValueError otherwise (also for x/0)."""
    match = FRACTION.match(text)
    if match:
        numerator, denominator = float(match.group(1)), float(match.group(2))
        if denominator == 0:
            raise ValueError(f"{text!r} divides by zero")
        return numerator / denominator
    return float(text)


@dataclass(frozen=True)
class DataConfig:
    source: str = "embedded:digits"
    split: str = "train"
    image_size: int = 32
    val_fraction: float = 0.01  # seeded held-out split, kept out of training (RCS uses it)
    subset: int | None = None  # only the first N images of the split (before the validation split); None: all
    cache_dir: str | None = None


@dataclass(frozen=True)
class ModelConfig:
    arch: str = "robust_resnet18"
    dual_bn: bool = True
    proj_layers: int = 3
    options: dict[str, Any] = field(default_factory=dict)  # further backbone arguments


@dataclass(frozen=True)
class AttackConfig:
    eps: float = 8 / 255
    alpha: float = 2 / 255
    steps: int = 5
    random_start: bool = True


@dataclass(frozen=True)
class MethodConfig:
    name: str = "acl"
    temperature: float = 0.5
    strength: float = 1.0  # SimCLR augmentation strength s (ACL; DynACL schedules it)
    adv_weight: float = 0.0  # w in ((1-w) L_nat + (1+w) L_adv) / 2; 0 for ACL (DynACL schedules it)
    schedule_period: int = 50  # DynACL: epochs per augmentation-strength stage
    ir: bool = False  # add invariant regularisation (SIR + AIR)
    sir_weight: float = 0.5  # lambda1
    air_weight: float = 0.5  # lambda2
    ir_divergence: str = "reference"  # "reference" (the papers' numbers) or "paper" (textbook KL)
    trades_beta: float = 6.0  # supervised TRADES (trainers/sat.py)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 1000
    batch_size: int = 512  # global: split across processes
    lr: float = 5.0
    momentum: float = 0.9
    weight_decay: float = 1e-6
    trust_coefficient: float = 1e-3
    warmup_epochs: float = 10
    lr_min: float = 1e-6  # where the cosine ends, at the last epoch
    lars_convention: str = "reference"  # "reference": LARS on every parameter; "simclr": biases/BN exempt
    seed: int = 1
    output_dir: str = "outputs/acl"
    checkpoint_every: int = 50  # epochs; 0 keeps only the final and on-signal checkpoints
    keep_checkpoints: int = 2
    mixed_precision: str | None = None  # None: whatever `accelerate launch` was told
    log_every: int = 10  # steps
    max_steps_per_epoch: int | None = None  # cut epochs short, for smoke runs (RCS then selects from as many minibatches)
    push_to_hub: str | None = None  # ORG/NAME: upload the model (with its card) when training ends
    probe: bool = False  # at the end: a quick linear probe, pre-trained vs random init, on the held-out test split


@dataclass(frozen=True)
class SpeedConfig:
    """The fast path, part by part: true, false, or auto (on where it is safe and pays: CUDA)."""

    bf16: bool | str = "auto"  # bf16 autocast of the attack and training passes
    channels_last: bool | str = "auto"
    compile: bool | str = "auto"  # torch.compile of the model, both batch-norm routes
    cuda_graphs: bool = False  # compile mode reduce-overhead; CUDA only, needs compile
    foreach: bool | str = "auto"  # multi-tensor optimiser step
    sync_free: bool = True  # read the loss back (and check it is finite) every log_every steps only


@dataclass(frozen=True)
class CoresetConfig:
    """Robustness-aware coreset selection (RCS); the defaults reproduce the reference code's selection (method.md).

    ``eta`` is the effective greedy step: the gain is eta * q_U . q_m and each pick steps
    theta <- theta - eta * q_m. The reference sets its step from ``--Coreset_lr`` (0.01) and applies
    it twice per pick (once through a copy of the head, once through the head itself: the same
    module), so its effective step is 2 x 0.01 = 0.02, the default here.
    """

    mode: str = "none"  # none | rcs | random (a random subset with the same budget)
    fraction: float = 0.2  # k
    warmup_epochs: int = 100  # on the full set before the first selection
    interval: int = 20  # epochs between selections
    rd: str = "minmax_kl"  # minmax_kl (reference) | softmax_kl
    approximation: str = "last_layer"  # last_layer (projection-head gradients) | full (every trainable parameter)
    gain_vector: str = "row_mean"  # row_mean (the reference: each gradient matrix averaged over rows) | full
    selection_loss: str = "acl"  # acl (the reference: plain ACL loss for every method) | method (the run's own loss)
    eta: float = 0.02  # effective greedy step (see above): the reference's --Coreset_lr 0.01 applied twice
    val_steps: int = 3  # PGD steps of RD's own attack
    val_alpha: float | None = None  # its step; None: (10/255) / val_steps, the reference's rule
    chunk_batches: int = 0  # greedy search per chunk of this many minibatches (0: one chunk)
    vmap_chunk: int = 8  # minibatches per vectorised gradient call (bounds memory)


@dataclass(frozen=True)
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    attack: AttackConfig = field(default_factory=AttackConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    speed: SpeedConfig = field(default_factory=SpeedConfig)
    coreset: CoresetConfig = field(default_factory=CoresetConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


SECTIONS: dict[str, type] = typing.get_type_hints(RunConfig)


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Read ``path`` (YAML), apply ``section.key=value`` overrides, validate, freeze."""
    raw = _read_yaml(path) if path else {}
    for item in overrides:
        _apply_override(raw, item)
    config = from_dict(raw)
    validate(config)
    return config


def _read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        raise RobustHubError(f"config file {path} is a directory; give the YAML file")
    if not path.is_file():
        raise RobustHubError(f"config file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as error:
        raise RobustHubError(f"config file {path} is not UTF-8 text (byte {error.start}); save it as UTF-8") from None
    except yaml.YAMLError as error:
        raise RobustHubError(f"config file {path} is not valid YAML: {str(error).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise RobustHubError(f"config file {path} must hold a mapping of sections")
    return raw


def _apply_override(raw: dict[str, Any], item: str) -> None:
    if "=" not in item or "." not in item.split("=", 1)[0]:
        raise RobustHubError(f"override {item!r} must look like section.key=value (e.g. train.epochs=10)")
    dotted, value = item.split("=", 1)
    section, key = dotted.split(".", 1)
    target = raw.setdefault(section, {})
    if not isinstance(target, dict):
        raise RobustHubError(f"config section {section!r} must be a mapping")
    target[key] = yaml.safe_load(value) if value.strip() else None


def from_dict(raw: dict[str, Any]) -> RunConfig:
    unknown = set(raw) - set(SECTIONS)
    if unknown:
        raise RobustHubError(f"unknown config section(s) {sorted(unknown)}; known: {sorted(SECTIONS)}")
    sections = {}
    for name, cls in SECTIONS.items():
        values = raw.get(name) or {}
        if not isinstance(values, dict):
            raise RobustHubError(f"config section {name!r} must be a mapping")
        sections[name] = _build_section(name, cls, values)
    return RunConfig(**sections)


def _build_section(name: str, cls: type, values: dict[str, Any]) -> Any:
    hints = typing.get_type_hints(cls)
    unknown = set(values) - set(hints)
    if unknown:
        raise RobustHubError(f"unknown key(s) {sorted(unknown)} in config section {name!r}; known: {sorted(hints)}")
    coerced = {key: _coerce(f"{name}.{key}", value, hints[key]) for key, value in values.items()}
    return cls(**coerced)


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """Check ``value`` against the field's type; accepts 8/255-style fractions for floats."""
    args = typing.get_args(hint)
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        if value is None and type(None) in args:
            return None
        members = [a for a in args if a is not type(None)]
        for member in members[:-1]:
            try:
                return _coerce(key, value, member)
            except RobustHubError:
                pass
        hint = members[-1]
    if hint is float:
        if isinstance(value, str):  # 8/255, and what YAML 1.1 leaves as text: 1e-3, inf, nan
            try:
                value = parse_fraction(value)
            except ValueError as error:
                if FRACTION.match(value):
                    raise RobustHubError(f"config value {key}={value!r}: {error}") from None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise RobustHubError(f"config value {key}={value!r} must be a finite number")
            return float(value)
    elif hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    elif hint is bool and isinstance(value, bool):
        return value
    elif hint is str and isinstance(value, str):
        return value
    elif typing.get_origin(hint) is dict and isinstance(value, dict):
        return value
    expected = getattr(hint, "__name__", str(hint))
    raise RobustHubError(f"config value {key}={value!r} should be of type {expected}")


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise RobustHubError(f"invalid config: {message}")


def validate(config: RunConfig) -> None:
    from robust_hub.losses import IR_DIVERGENCES
    from robust_hub.training.methods import METHODS
    from robust_hub.training.optim import LARS_CONVENTIONS
    from robust_hub.training.sat import SAT_METHODS

    d, m, a, me, t = config.data, config.model, config.attack, config.method, config.train
    _check(d.image_size >= 8, f"data.image_size must be >= 8, got {d.image_size}")
    _check(d.subset is None or d.subset >= 2, f"data.subset must be >= 2 images (or unset for all), got {d.subset}")
    # The one check of val_fraction: the held-out split needs images on both sides (RCS uses it).
    _check(0 < d.val_fraction < 0.5, f"data.val_fraction must be in (0, 0.5), got {d.val_fraction}")
    _check(m.proj_layers in (2, 3), f"model.proj_layers must be 2 or 3, got {m.proj_layers}")
    _check(0 <= a.eps <= 1, f"attack.eps must be in [0, 1] (pixel units), got {a.eps}")
    _check(0 <= a.alpha <= 1, f"attack.alpha must be in [0, 1], got {a.alpha}")
    _check(a.steps >= 0, f"attack.steps must be >= 0, got {a.steps}")
    _check(me.name in METHODS or me.name in SAT_METHODS,
           f"method.name must be one of {sorted(METHODS)} (pre-training) or {sorted(SAT_METHODS)} (trainers/sat.py), got {me.name!r}")
    _check(me.trades_beta >= 0, f"method.trades_beta must be >= 0, got {me.trades_beta}")
    _check(me.temperature > 0, f"method.temperature must be > 0, got {me.temperature}")
    _check(0 <= me.strength <= 1, f"method.strength must be in [0, 1], got {me.strength}")
    _check(-1 <= me.adv_weight <= 1, f"method.adv_weight must be in [-1, 1], got {me.adv_weight}")
    _check(me.name != "dynacl" or (me.strength, me.adv_weight) == (1.0, 0.0),
           "method.strength and method.adv_weight are scheduled by DynACL; leave them unset with method.name=dynacl")
    _check(not (me.ir and me.name in SAT_METHODS), "method.ir adds invariant regularisation to ACL/DynACL pre-training; "
           f"it does not apply to {me.name}")
    _check(me.schedule_period >= 1, f"method.schedule_period must be >= 1, got {me.schedule_period}")
    _check(me.sir_weight >= 0 and me.air_weight >= 0, "method.sir_weight and method.air_weight must be >= 0")
    _check(me.ir_divergence in IR_DIVERGENCES,
           f"method.ir_divergence must be one of {list(IR_DIVERGENCES)}, got {me.ir_divergence!r}")
    _check(t.epochs >= 1, f"train.epochs must be >= 1, got {t.epochs}")
    _check(t.batch_size >= 2, f"train.batch_size must be >= 2 (contrastive pairs), got {t.batch_size}")
    _check(t.lr > 0, f"train.lr must be > 0, got {t.lr}")
    _check(0 <= t.momentum < 1, f"train.momentum must be in [0, 1), got {t.momentum}")
    _check(t.weight_decay >= 0, f"train.weight_decay must be >= 0, got {t.weight_decay}")
    _check(t.trust_coefficient > 0, f"train.trust_coefficient must be > 0, got {t.trust_coefficient}")
    _check(0 <= t.warmup_epochs < t.epochs, f"train.warmup_epochs must be in [0, epochs), got {t.warmup_epochs}")
    _check(0 <= t.lr_min <= t.lr, f"train.lr_min must be in [0, train.lr], got {t.lr_min}")
    _check(t.lars_convention in LARS_CONVENTIONS,
           f"train.lars_convention must be one of {list(LARS_CONVENTIONS)}, got {t.lars_convention!r}")
    _check(t.checkpoint_every >= 0, f"train.checkpoint_every must be >= 0, got {t.checkpoint_every}")
    _check(t.keep_checkpoints >= 1, f"train.keep_checkpoints must be >= 1, got {t.keep_checkpoints}")
    _check(t.mixed_precision in (None, "no", "fp16", "bf16"), f"train.mixed_precision must be no, fp16 or bf16, got {t.mixed_precision!r}")
    _check(t.log_every >= 1, f"train.log_every must be >= 1, got {t.log_every}")
    _check(t.max_steps_per_epoch is None or t.max_steps_per_epoch >= 1, "train.max_steps_per_epoch must be >= 1")
    _check(t.push_to_hub is None or t.push_to_hub.count("/") == 1, "train.push_to_hub must be a Hub repo id ORG/NAME")
    _validate_speed(config.speed, t)
    _validate_coreset(config)


def _validate_speed(speed: SpeedConfig, train: TrainConfig) -> None:
    for key in ("bf16", "channels_last", "compile", "foreach"):
        value = getattr(speed, key)
        _check(isinstance(value, bool) or value == "auto", f"speed.{key} must be true, false or auto, got {value!r}")
    _check(not (speed.cuda_graphs and speed.compile is False), "speed.cuda_graphs=true needs speed.compile (true or auto)")
    _check(not (speed.bf16 is True and train.mixed_precision == "fp16"),
           "speed.bf16=true conflicts with train.mixed_precision=fp16")


def _validate_coreset(config: RunConfig) -> None:
    from robust_hub.coreset.objective import RD_KINDS
    from robust_hub.coreset.select import APPROXIMATIONS, GAIN_VECTORS, MODES, SELECTION_LOSSES

    c = config.coreset
    _check(c.mode in MODES, f"coreset.mode must be one of {list(MODES)}, got {c.mode!r}")
    _check(0 < c.fraction <= 1, f"coreset.fraction must be in (0, 1], got {c.fraction}")
    _check(c.warmup_epochs >= 0, f"coreset.warmup_epochs must be >= 0, got {c.warmup_epochs}")
    _check(c.interval >= 1, f"coreset.interval must be >= 1, got {c.interval}")
    _check(c.rd in RD_KINDS, f"coreset.rd must be one of {list(RD_KINDS)}, got {c.rd!r}")
    _check(c.approximation in APPROXIMATIONS, f"coreset.approximation must be one of {list(APPROXIMATIONS)}, got {c.approximation!r}")
    _check(c.gain_vector in GAIN_VECTORS, f"coreset.gain_vector must be one of {list(GAIN_VECTORS)}, got {c.gain_vector!r}")
    _check(c.selection_loss in SELECTION_LOSSES,
           f"coreset.selection_loss must be one of {list(SELECTION_LOSSES)}, got {c.selection_loss!r}")
    _check(c.eta > 0, f"coreset.eta must be > 0, got {c.eta}")
    _check(c.val_steps >= 0, f"coreset.val_steps must be >= 0, got {c.val_steps}")
    _check(c.val_alpha is None or 0 < c.val_alpha <= 1, f"coreset.val_alpha must be in (0, 1], got {c.val_alpha}")
    _check(c.chunk_batches >= 0, f"coreset.chunk_batches must be >= 0, got {c.chunk_batches}")
    _check(c.vmap_chunk >= 0, f"coreset.vmap_chunk must be >= 0, got {c.vmap_chunk}")
    if c.mode != "none":
        _check(c.warmup_epochs < config.train.epochs,
               f"coreset.warmup_epochs ({c.warmup_epochs}) must be < train.epochs ({config.train.epochs}) or no coreset is ever used")
