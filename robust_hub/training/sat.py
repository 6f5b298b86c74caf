"""Supervised adversarial training (PGD-AT, TRADES) on the pre-training loop, data layer and checkpoints.

    accelerate launch trainers/sat.py --config configs/sat_cifar10.yaml

The result is a classifier in the Hugging Face format (backbone + ``head``); ``robust-hub eval MODEL
--protocols own`` scores it as it is, with no finetuning.
"""

from __future__ import annotations

import dataclasses
from contextlib import AbstractContextManager
from typing import Callable

import kornia.augmentation as K
import torch
import torch.nn.functional as F
from timm.optim import param_groups_weight_decay
from torch import nn

from robust_hub.config import RunConfig, TrainConfig
from robust_hub.data import ImageDataset
from robust_hub.errors import RobustHubError
from robust_hub.evaluation.attacks import PGDConfig, pgd, trades_attack, trades_loss
from robust_hub.training.loop import PretrainResult, _build_model, _Trainer, run_training
from robust_hub.training.methods import LossTerms


class PGDAT:
    """PGD adversarial training (Madry et al., 2018): cross-entropy on PGD examples."""

    name, title, supervised = "pgd_at", "PGD adversarial training", True

    def __init__(self, config: RunConfig):
        self.config = config
        a = config.attack
        self.pgd = PGDConfig(eps=a.eps, alpha=a.alpha, steps=a.steps, random_start=a.random_start)

    @property
    def label(self) -> str:
        from robust_hub.training.card import method_label

        return method_label(self.config)

    def strength(self, epoch: int) -> float:
        return 0.0  # no SimCLR views: SAT uses crop + flip (``SATTrainer.augment``)

    def adversarial(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                    autocast: Callable[[], AbstractContextManager]) -> torch.Tensor:
        """The attack on the model in eval mode (input gradients only)."""
        was_training = model.training
        model.eval()
        try:
            with autocast():
                return self._attack(model, x, y)
        finally:
            model.train(was_training)

    def _attack(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return pgd(model, x, y, self.pgd)

    def loss(self, model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor) -> LossTerms:
        ce = F.cross_entropy(model(x_adv).float(), y)
        return LossTerms(ce, {"adv_ce": ce})


class TRADES(PGDAT):
    """TRADES (Zhang et al., 2019): CE(clean) + beta * KL(p(x) || p(x_adv)), the attack maximising the KL."""

    name, title = "trades", "TRADES"

    def _attack(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return trades_attack(model, x, self.pgd)

    def loss(self, model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor) -> LossTerms:
        clean, adv = model(torch.cat([x, x_adv])).float().chunk(2)
        natural = F.cross_entropy(clean, y)
        total = trades_loss(clean, adv, y, self.config.method.trades_beta)
        return LossTerms(total, {"nat_ce": natural, "robust_kl": total - natural})


SAT_METHODS: dict[str, type[PGDAT]] = {"pgd_at": PGDAT, "trades": TRADES}


def build_sgd(model: nn.Module, train: TrainConfig) -> torch.optim.SGD:
    """SGD with momentum; biases and batch norms without weight decay."""
    groups = param_groups_weight_decay(model, weight_decay=train.weight_decay)
    return torch.optim.SGD(groups, lr=train.lr, momentum=train.momentum)


class SATTrainer(_Trainer):
    """The pre-training loop with a labelled, supervised step."""

    task = "sat"
    METHODS = SAT_METHODS
    build_optimizer = staticmethod(build_sgd)

    @staticmethod
    def build_model(config: RunConfig, train_set: ImageDataset) -> nn.Module:
        if train_set.num_classes < 2 or bool((train_set.labels < 0).any()):
            raise RobustHubError(f"{config.data.source} has no labels for every image; supervised adversarial "
                                 "training needs a labelled dataset")
        # No projection head: it would be an unused parameter set (and DDP refuses those).
        model = _build_model(dataclasses.replace(config, model=dataclasses.replace(config.model, proj_layers=0)))
        model.reset_classifier(train_set.num_classes)
        return model

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.labels = self.train_set.labels.to(self.accelerator.device)
        size = self.config.data.image_size
        self.augment = nn.Sequential(K.RandomCrop((size, size), padding=size // 8), K.RandomHorizontalFlip())

    def schedule_scalars(self, epoch: int) -> dict[str, float]:
        return {}  # nothing scheduled besides the learning rate

    def batch_loss(self, augment: object, indices: torch.Tensor) -> LossTerms:
        fast = self.fast
        with torch.no_grad():
            x = fast.images(self.augment(self.images[indices].float().div(255)).clamp(0, 1))
        y = self.labels[indices]
        x_adv = self.method.adversarial(self.raw_model, x, y, fast.autocast_factory(self.accelerator.autocast))
        self.model.train()
        with fast.autocast_factory(self.accelerator.autocast)():
            return self.method.loss(self.model, x, x_adv, y)


def train_sat(config: RunConfig, resume: str | bool | None = None, overwrite: bool = False) -> PretrainResult:
    """Adversarially train a classifier per ``config`` (method.name pgd_at or trades)."""
    return run_training(config, resume, SATTrainer, overwrite)
