"""The RobustSSL finetuning protocols: SLF, ALF and AFF (TRADES), with method.md's defaults.

- SLF: encoder frozen in eval mode, a linear head trained on clean cross-entropy.
- ALF: as SLF, the head trained on PGD-10 examples (step eps/4, random start, CE) crafted against
  the frozen encoder + head.
- AFF: the whole network trained with TRADES (beta 6), inner PGD-10 from x + 0.001 * N(0,1)
  (``trades_start_noise``; DynACL++ starts at x). As in the
  TRADES reference code, the inner attack runs with the network in eval mode and the loss in train
  mode. A dual-BN robust-hub backbone uses its default (pgd) route throughout.

Optimiser: ``torch.optim.SGD`` with momentum and weight decay; ``MultiStepLR`` stepped per epoch.
Training augmentation (on by default, as in the benchmark's finetuning code): random crop with
4-pixel zero padding and horizontal flip.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from robust_hub.errors import RobustHubError
from robust_hub.evaluation.attacks import PGDConfig, pgd, trades_attack, trades_loss

PROTOCOLS = ("slf", "alf", "aff")
# "own": no finetuning, the model's own classifier head (a supervised adversarially trained classifier).
ALL_PROTOCOLS = (*PROTOCOLS, "own")
LINEAR_LR = {"cifar10": 0.01, "cifar100": 0.05}
# The benchmark finetunes STL-10 in two settings (method.md): 32x32 images, or its native 96x96 for 96x96 models.
STL10_SETTINGS = {32: {"slf": {"lr": 0.01, "batch_size": 128}, "alf": {"lr": 0.01, "batch_size": 128}},
                  96: {"slf": {"lr": 0.1, "batch_size": 512}, "alf": {"lr": 0.1, "batch_size": 512},
                       "aff": {"milestones": (10, 20)}}}


@dataclass(frozen=True)
class ProtocolConfig:
    """Every setting of one finetuning protocol; recorded verbatim in each result."""

    name: str
    epochs: int = 25
    lr: float = 0.01
    batch_size: int = 512
    milestones: tuple[int, ...] = (10, 20)
    gamma: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 2e-4
    augment: bool = True
    train_attack: PGDConfig | None = None
    trades_beta: float | None = None
    trades_start_noise: float = 0.001  # std of the Gaussian noise TRADES' inner attack starts from (0: at x)
    first_epoch_lr: float | None = None  # the first epoch at this lr, then as the schedule goes on from it

    def __post_init__(self) -> None:
        if self.name not in ALL_PROTOCOLS:
            raise RobustHubError(f"unknown protocol {self.name!r}; choose from {', '.join(ALL_PROTOCOLS)}")
        if self.epochs < 0 or self.batch_size <= 0 or self.lr <= 0:
            raise RobustHubError(f"{self.name}: epochs must be >= 0, batch_size and lr > 0")
        if self.name in ("alf", "aff") and self.train_attack is None:
            raise RobustHubError(f"{self.name} needs a training attack")
        if self.name == "aff" and self.trades_beta is None:
            raise RobustHubError("aff needs trades_beta")
        object.__setattr__(self, "milestones", tuple(int(m) for m in self.milestones))

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["milestones"] = list(self.milestones)
        return d


def default_protocol_config(name: str, dataset: str = "cifar10", *, eps: float = 8 / 255, norm: str = "linf",
                            image_size: int = 32) -> ProtocolConfig:
    """method.md's defaults for ``name`` on ``dataset`` (a short name; others get CIFAR-10's lr); STL-10 takes
    the benchmark's setting for its ``image_size`` (32, or 96 for models that take 96x96 images)."""
    name = name.lower()
    attack = PGDConfig(eps=eps, alpha=eps / 4, steps=10, norm=norm, random_start=True)
    if name == "slf":
        cfg = ProtocolConfig("slf", lr=LINEAR_LR.get(dataset, 0.01))
    elif name == "alf":
        cfg = ProtocolConfig("alf", lr=LINEAR_LR.get(dataset, 0.01), train_attack=attack)
    elif name == "own":
        return ProtocolConfig("own", epochs=0, augment=False)
    elif name == "aff":
        cfg = ProtocolConfig("aff", lr=0.1, batch_size=128, milestones=(15, 20), train_attack=attack, trades_beta=6.0)
    else:
        raise RobustHubError(f"unknown protocol {name!r}; choose from {', '.join(PROTOCOLS)}")
    if dataset == "stl10":
        cfg = dataclasses.replace(cfg, **STL10_SETTINGS[96 if image_size == 96 else 32].get(name, {}))
    return cfg


def _coerce(value, like, key: str):
    if isinstance(like, bool):
        if isinstance(value, str):
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise RobustHubError(f"{key} must be true or false, not {value!r}")
            return value.lower() in ("true", "1", "yes")
        return bool(value)
    if isinstance(like, tuple):
        parts = value.split(",") if isinstance(value, str) else value
        return tuple(int(p) for p in parts if str(p).strip() != "")
    try:
        return type(like)(value) if like is not None else float(value)
    except (TypeError, ValueError) as exc:
        raise RobustHubError(f"{key} must be a {type(like).__name__}, not {value!r}") from exc


def with_overrides(cfg: ProtocolConfig, overrides: dict) -> ProtocolConfig:
    """A copy of ``cfg`` with ``{"lr": 0.1, "train_attack.steps": 5, ...}`` applied; unknown keys fail."""
    top, attack = {}, {}
    fields = {f.name for f in dataclasses.fields(ProtocolConfig)} - {"name", "train_attack"}
    attack_fields = {f.name for f in dataclasses.fields(PGDConfig)}
    for key, value in overrides.items():
        if key.startswith("train_attack."):
            sub = key.split(".", 1)[1]
            if sub not in attack_fields or cfg.train_attack is None:
                raise RobustHubError(f"{cfg.name} has no setting {key!r}")
            attack[sub] = _coerce(value, getattr(cfg.train_attack, sub), key)
        elif key in fields:
            top[key] = _coerce(value, getattr(cfg, key), key)
        else:
            raise RobustHubError(f"{cfg.name} has no setting {key!r}; settings: {', '.join(sorted(fields))}")
    if attack:
        top["train_attack"] = dataclasses.replace(cfg.train_attack, **attack)
    return dataclasses.replace(cfg, **top)


class Classifier(nn.Module):
    """An encoder (``[0,1]`` images -> features) followed by a linear head: images -> logits."""

    def __init__(self, encoder: nn.Module, num_features: int, num_classes: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(num_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))


def augment_batch(x: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop with ``pad``-pixel zero padding and random horizontal flip, per image."""
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5
    out = torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])
    out[flip] = out[flip].flip(-1)
    return out


def _loss(cfg: ProtocolConfig, model: Classifier, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if cfg.name == "slf":
        return F.cross_entropy(model(x), y)
    if cfg.name == "alf":
        x_adv = pgd(model, x, y, cfg.train_attack)
        return F.cross_entropy(model(x_adv), y)
    model.eval()
    x_adv = trades_attack(model, x, cfg.train_attack, init_std=cfg.trades_start_noise)
    model.train()
    return trades_loss(model(x), model(x_adv), y, cfg.trades_beta)


def _own_classifier(backbone: nn.Module, num_features: int, num_classes: int) -> Classifier:
    """The backbone with the classifier head it was saved with (see ``loading._wrap_timm``)."""
    head = getattr(backbone, "own_head", None)
    if not isinstance(head, nn.Linear) or head.out_features != num_classes or head.in_features != num_features:
        have = f"a {head.out_features}-class head" if isinstance(head, nn.Linear) else "no classifier head"
        raise RobustHubError(f"protocol own scores a model's own classifier over {num_classes} classes; this model has {have}")
    model = Classifier(copy.deepcopy(backbone), num_features, num_classes)
    model.head = copy.deepcopy(head)
    return model


def _set_train_mode(cfg: ProtocolConfig, model: Classifier) -> None:
    model.train()
    if cfg.name in ("slf", "alf"):
        model.encoder.eval()


def finetune(
    backbone: nn.Module,
    num_features: int,
    images: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    cfg: ProtocolConfig,
    *,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = True,
    head: nn.Linear | None = None,
) -> Classifier:
    """Finetune a copy of ``backbone`` with a new head (or a copy of ``head``) on uint8 ``images``;
    returns it in eval mode."""
    if cfg.name == "own":
        return _own_classifier(backbone, num_features, num_classes).to(device).eval()
    keep = labels >= 0
    images, labels = images[keep], labels[keep]
    if len(images) == 0:
        raise RobustHubError("the training split has no labelled images to finetune on")
    torch.manual_seed(seed)
    model = Classifier(copy.deepcopy(backbone), num_features, num_classes).to(device)
    if head is not None:
        model.head.load_state_dict(head.state_dict())
    if cfg.name in ("slf", "alf"):
        model.encoder.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(cfg.milestones), gamma=cfg.gamma)
    gen = torch.Generator().manual_seed(seed)
    steps_per_epoch = -(-len(images) // cfg.batch_size)
    bar = tqdm(total=cfg.epochs * steps_per_epoch, desc=f"{cfg.name} finetune", disable=not progress, leave=False)
    for epoch in range(cfg.epochs):
        if epoch == 0 and cfg.first_epoch_lr is not None:  # MultiStepLR then goes on from this lr, as the benchmark's
            for group in opt.param_groups:
                group["lr"] = cfg.first_epoch_lr
        order = torch.randperm(len(images), generator=gen)
        for i in range(0, len(images), cfg.batch_size):
            idx = order[i:i + cfg.batch_size]
            x = images[idx].float().div(255)
            if cfg.augment:
                x = augment_batch(x, gen)
            x, y = x.to(device), labels[idx].to(device)
            _set_train_mode(cfg, model)
            loss = _loss(cfg, model, x, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            bar.update(1)
            if progress and (bar.n % 20 == 0 or bar.n == bar.total):  # reading the loss syncs the device
                bar.set_postfix(loss=f"{loss.item():.3f}")
        sched.step()
    bar.close()
    return model.eval()
