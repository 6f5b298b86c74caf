"""White-box attacks on [0,1] images, used for evaluation and for ALF/AFF finetuning.

Every attack asks autograd for the input gradient only and never changes the model's mode or
touches an optimiser; callers choose train/eval mode. Norms: ``"linf"`` and ``"l2"``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from robust_hub.errors import RobustHubError

NORMS = ("linf", "l2")


def parse_norm(norm: str) -> str:
    """Normalise a user-given norm name (``Linf``, ``linf``, ``L2``...) to ``linf`` / ``l2``."""
    value = norm.lower().replace("-", "").replace("_", "")
    if value in ("linf", "inf", "l∞"):
        return "linf"
    if value == "l2":
        return "l2"
    raise RobustHubError(f"unknown norm {norm!r}; use linf or l2")


@dataclass(frozen=True)
class PGDConfig:
    """A PGD attack: ``steps`` steps of size ``alpha`` inside the ``norm`` ball of radius ``eps``."""

    eps: float = 8 / 255
    alpha: float = 2 / 255
    steps: int = 10
    norm: str = "linf"
    random_start: bool = True

    def __post_init__(self) -> None:
        if self.eps < 0 or self.alpha < 0 or self.steps < 0:
            raise RobustHubError("attack eps, step size and steps must be non-negative")
        object.__setattr__(self, "norm", parse_norm(self.norm))


def _flat_norm(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (t.dim() - 1)))


def project(delta: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """Project perturbations onto the eps-ball of ``norm``."""
    if norm == "linf":
        return delta.clamp(-eps, eps)
    return delta * (eps / _flat_norm(delta)).clamp(max=1.0)


def _ascent_step(grad: torch.Tensor, alpha: float, norm: str) -> torch.Tensor:
    if norm == "linf":
        return alpha * grad.sign()
    return alpha * grad / _flat_norm(grad)


def random_init(x: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """A uniform start in the L-inf ball, or a random direction of random radius in the L2 ball."""
    if norm == "linf":
        return torch.empty_like(x).uniform_(-eps, eps)
    direction = torch.randn_like(x)
    radius = torch.rand(x.shape[0], *([1] * (x.dim() - 1)), device=x.device, dtype=x.dtype)
    return direction / _flat_norm(direction) * radius * eps


def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: PGDConfig) -> torch.Tensor:
    """Untargeted PGD maximising cross-entropy; returns adversarial images in [0,1]."""
    x = x.detach()
    if cfg.eps == 0 or cfg.steps == 0:
        return x.clone()
    delta = random_init(x, cfg.eps, cfg.norm) if cfg.random_start else torch.zeros_like(x)
    x_adv = (x + delta).clamp(0, 1)
    for _ in range(cfg.steps):
        x_adv.requires_grad_(True)
        loss = F.cross_entropy(model(x_adv), y)
        (grad,) = torch.autograd.grad(loss, x_adv)
        step = x_adv.detach() + _ascent_step(grad, cfg.alpha, cfg.norm)
        x_adv = (x + project(step - x, cfg.eps, cfg.norm)).clamp(0, 1)
    return x_adv.detach()


def trades_attack(model: nn.Module, x: torch.Tensor, cfg: PGDConfig, init_std: float = 0.001) -> torch.Tensor:
    """TRADES inner maximisation: maximise KL(p(x) || p(x')) starting from x + init_std * N(0,1)."""
    x = x.detach()
    if cfg.eps == 0 or cfg.steps == 0:
        return x.clone()
    with torch.no_grad():
        p_clean = F.softmax(model(x), dim=1)
    x_adv = (x + init_std * torch.randn_like(x)).clamp(0, 1)
    for _ in range(cfg.steps):
        x_adv.requires_grad_(True)
        loss = F.kl_div(F.log_softmax(model(x_adv), dim=1), p_clean, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x_adv)
        step = x_adv.detach() + _ascent_step(grad, cfg.alpha, cfg.norm)
        x_adv = (x + project(step - x, cfg.eps, cfg.norm)).clamp(0, 1)
    return x_adv.detach()


def trades_loss(logits_clean: torch.Tensor, logits_adv: torch.Tensor, y: torch.Tensor, beta: float) -> torch.Tensor:
    """TRADES objective: CE(clean) + beta * KL(p_clean || p_adv), the KL averaged over the batch."""
    natural = F.cross_entropy(logits_clean, y)
    robust = F.kl_div(F.log_softmax(logits_adv, dim=1), F.softmax(logits_clean, dim=1), reduction="batchmean")
    return natural + beta * robust


def input_gradient_norms(model: nn.Module, x: torch.Tensor, objective) -> torch.Tensor:
    """Per-sample L1 norm of the input gradient of ``objective(logits)`` (a summed scalar); zeros where none flows."""
    x = x.detach().clone().requires_grad_(True)
    value = objective(model(x))
    if not value.requires_grad:
        return torch.zeros(x.shape[0], device=x.device)
    (grad,) = torch.autograd.grad(value, x, allow_unused=True)
    if grad is None:
        return torch.zeros(x.shape[0], device=x.device)
    return grad.flatten(1).abs().sum(dim=1).detach()


def margin_input_gradient_norms(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample L1 norm of the input gradient of the logit margin (true minus best other class).

    The margin does not saturate like cross-entropy, so a zero gradient here means the model
    really hides its gradient (e.g. a rounding input layer).
    """
    def margin(logits: torch.Tensor) -> torch.Tensor:
        true = logits.gather(1, y.view(-1, 1)).squeeze(1)
        other = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf")).amax(dim=1)
        return (true - other).sum()

    return input_gradient_norms(model, x, margin)
