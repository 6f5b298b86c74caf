"""LARS and the schedule against the reference update rule and method.md's formula, written here."""

import copy
import math

import pytest
import torch
from torch import nn

from timm.optim import Lars

from robust_hub.config import load_config
from robust_hub.training.fast import FastPath
from robust_hub.training.optim import build_optimizer, build_scheduler

PAPER = ["train.epochs=1000", "train.warmup_epochs=10", "train.lr=5.0", "train.weight_decay=1e-6",
         "train.momentum=0.9", "train.trust_coefficient=1e-3"]


def small_model() -> nn.Module:
    # No bias directly before a batch norm: its true gradient is 0 and what autograd returns is
    # rounding noise, which the trust ratio (eta ||w|| / ||g||) would blow up into a random step.
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, bias=True), nn.ReLU(), nn.BatchNorm2d(4), nn.Flatten(),
                         nn.Linear(4 * 4 * 4, 3, bias=True))


def gradients_at(model: nn.Module, step: int) -> None:
    """Fill .grad with the gradient of a fixed loss on fixed data (the same for both optimisers)."""
    g = torch.Generator().manual_seed(step)
    x, target = torch.rand(8, 3, 6, 6, generator=g), torch.randn(8, 3, generator=g)
    model.zero_grad()
    ((model(x) - target) ** 2).mean().backward()


def reference_lars_step(params, buffers, lr, momentum=0.9, wd=1e-6, eta=1e-3):
    """method.md's LARS: one group; ratio = eta ||w|| / (||g|| + wd ||w||) (1 where a norm is 0);
    buf <- m buf + lr ratio (g + wd w); w <- w - buf. Every parameter, BN and biases included."""
    with torch.no_grad():
        for i, p in enumerate(params):
            w_norm, g_norm = p.norm().item(), p.grad.norm().item()
            ratio = eta * w_norm / (g_norm + wd * w_norm) if w_norm > 0 and g_norm > 0 else 1.0
            update = lr * ratio * (p.grad + wd * p)
            buffers[i] = update if buffers[i] is None else momentum * buffers[i] + update
            p -= buffers[i]


def lr_by_formula(epoch: float, lr=5.0, epochs=1000, warmup=10, lr_min=1e-6) -> float:
    """method.md, per iteration s of S with W warm-up iterations, written with s / steps = epoch."""
    if epoch < warmup:
        return lr * epoch / warmup
    return lr_min + (lr - lr_min) * (1 + math.cos(math.pi * (epoch - warmup) / (epochs - warmup))) / 2


def run_both(lrs: list[float], make_optimizer=None) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
    """Steps of both optimisers at the given lrs: (start, ours, reference) parameters."""
    ours_model, ref_model = small_model(), small_model()
    start = [p.detach().clone() for p in ours_model.parameters()]
    optimizer = (make_optimizer or build_optimizer)(ours_model, load_config(None, PAPER).train)
    ref_params, buffers = list(ref_model.parameters()), [None] * len(start)
    for step, lr in enumerate(lrs):
        for group in optimizer.param_groups:
            group["lr"] = lr
        gradients_at(ours_model, step)
        optimizer.step()
        gradients_at(ref_model, step)
        reference_lars_step(ref_params, buffers, lr)
    return start, [p.detach() for p in ours_model.parameters()], [p.detach() for p in ref_params]


def agree(ours, reference) -> bool:
    return all(torch.allclose(a, b, rtol=1e-5, atol=0) for a, b in zip(ours, reference))


def test_three_steps_match_the_reference_update_rule_at_a_constant_lr():
    start, ours, reference = run_both([5.0, 5.0, 5.0])
    assert agree(ours, reference)
    # the steps really moved every parameter, the batch-norm ones included
    assert all(not torch.allclose(a, b, rtol=1e-4, atol=0) for a, b in zip(start, reference))


def largest_drift(start, ours, reference) -> float:
    """The largest difference between the two, as a fraction of how far the reference moved a parameter."""
    return max(((a - b).norm() / (b - w0).norm()).item() for w0, a, b in zip(start, ours, reference))


def plain_timm_lars(model, train):
    return Lars(model.parameters(), lr=train.lr, momentum=train.momentum, weight_decay=train.weight_decay,
                eps=0.0, always_adapt=True, trust_coeff=train.trust_coefficient)


def test_drift_from_the_reference_under_warm_up(capsys):
    # Iterations 1..3 of the warm-up with 10 steps per epoch (W = 100 iterations): lr = 5 s / 100.
    lrs = [5.0 * s / 100 for s in (1, 2, 3)]
    ours, plain = run_both(lrs), run_both(lrs, plain_timm_lars)
    with capsys.disabled():
        print(f"\nafter 3 warm-up steps, largest difference from the reference rule as a fraction of the move: "
              f"robust-hub {largest_drift(*ours):.2e}, timm's plain Lars {largest_drift(*plain):.2e}")
    assert agree(ours[1], ours[2])
    assert largest_drift(*plain) > 0.1  # without the buffer rescaling the drift is real


@pytest.mark.parametrize("convention", ["reference", "simclr"])
def test_the_multi_tensor_step_is_the_single_tensor_step_under_warm_up(convention):
    """speed.foreach: timm's multi-tensor LARS under the reference momentum rule (lr moving each step)."""
    lrs = [5.0 * s / 100 for s in (1, 2, 3)]

    def make(foreach):
        def build(model, train):
            train = load_config(None, [*PAPER, f"train.lars_convention={convention}"]).train
            return FastPath(foreach=foreach).prepare_optimizer(build_optimizer(model, train))
        return build

    start, single, _ = run_both(lrs, make(False))
    _, multi, _ = run_both(lrs, make(True))
    assert all(torch.allclose(a, b, rtol=1e-6, atol=1e-9) for a, b in zip(multi, single))
    assert all(not torch.allclose(a, b) for a, b in zip(start, multi))  # every parameter moved
    if convention == "reference":
        _, _, reference = run_both(lrs)
        assert agree(multi, reference)


def test_simclr_convention_exempts_biases_and_batch_norm():
    model = small_model()
    optimizer = build_optimizer(model, load_config(None, [*PAPER, "train.lars_convention=simclr"]).train)
    bias_before = model[2].bias.detach().clone()
    gradients_at(model, 0)
    grad = model[2].bias.grad.clone()
    optimizer.step()
    assert torch.allclose(model[2].bias, bias_before - 5.0 * grad)  # the raw lr of 5.0
    reference = build_optimizer(small_model(), load_config(None, PAPER).train)
    assert len(reference.param_groups) == 1 and reference.param_groups[0]["weight_decay"] == 1e-6


@pytest.mark.parametrize("epoch", [0.5, 10, 500, 900, 999])
def test_lr_follows_the_reference_schedule(epoch):
    optimizer = build_optimizer(small_model(), load_config(None, PAPER).train)
    scheduler = build_scheduler(optimizer, load_config(None, PAPER).train)
    scheduler.step(epoch)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(lr_by_formula(epoch), rel=1e-9, abs=1e-12)


def test_lr_ends_at_lr_min_at_the_last_epoch_and_starts_at_zero():
    train = load_config(None, PAPER).train
    optimizer = build_optimizer(small_model(), train)
    scheduler = build_scheduler(optimizer, train)
    assert optimizer.param_groups[0]["lr"] == 0.0  # method.md: lr = 5.0 * s / W at iteration s = 0
    scheduler.step(1000)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-6)
