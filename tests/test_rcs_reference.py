"""RCS selects as the reference code does (method.md), and the one-line bugs that would change that are caught.

The reference greedy search and RD are written out here from method.md's formulas (numpy, or torch on
this file's own formulas), never with robust-hub's own functions.
"""

import dataclasses
import math

import numpy as np
import pytest
import torch

from helpers import with_distinct_bn_statistics
from robust_hub.config import CoresetConfig, load_config
from robust_hub.coreset import greedy_select, partition, rd_attack, select_coreset
from robust_hub.coreset.select import _RCS, head_linear_names
from robust_hub.models import create_backbone
from robust_hub.training.card import coreset_line
from robust_hub.training.methods import METHODS

# method.md: the training script sets the selection step from --Coreset_lr (default 0.01), and each pick
# applies it twice (through a copy of the head and through the head itself, the same module).
REFERENCE_CORESET_LR, REFERENCE_APPLICATIONS = 0.01, 2
FLOOR = 1e-8  # method.md's minmax-KL floor


def tiny_config(*overrides):
    return load_config(None, ["model.arch=robust_resnet_tiny", "data.image_size=16", "train.batch_size=8",
                              "attack.steps=1", "train.epochs=10", "train.warmup_epochs=1", "coreset.mode=rcs",
                              "coreset.warmup_epochs=0", *overrides])


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return with_distinct_bn_statistics(create_backbone("robust_resnet_tiny", dual_bn=True, proj_layers=3), seed)


def uint8_images(n, size=16, seed=0):
    return (torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 255).to(torch.uint8)


# ----------------------------------------------------------------------------- the defaults
def test_coreset_defaults_are_the_reference_selection():
    c = CoresetConfig()
    assert c.eta == pytest.approx(REFERENCE_CORESET_LR * REFERENCE_APPLICATIONS) == 0.02
    assert c.gain_vector == "row_mean"  # method.md: the gain compares gradients compressed to their row means
    assert c.selection_loss == "acl"  # method.md: plain ACL loss for every method, DynACL-RCS included


def test_the_card_names_the_selection_variant():
    reference = coreset_line(tiny_config())
    assert "the reference's selection" in reference and "eta 0.02" in reference and "selection loss acl" in reference
    for variant in ("coreset.gain_vector=full", "coreset.selection_loss=method"):
        line = coreset_line(tiny_config(variant))
        assert "a variant of the reference's selection" in line and variant.split("=")[1] in line


# ----------------------------------------------------------------------------- a constructed problem
SHAPES = [(128, 128), (128,), (128, 128), (128, 128)]  # robust_resnet_tiny's head linear layers
D = sum(math.prod(s) for s in SHAPES)


def constructed_problem(seed=3, batches=8, rank=4, curvature=1e4):
    """Per-minibatch head gradients q_m whose row means differ, and q_U(theta) = g0 + U V^T (theta - theta0),
    the gradient of a quadratic RD, strongly curved so that the greedy step changes later picks."""
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(batches, D)) + 0.5 * rng.normal(size=(batches, 1))
    g0 = rng.normal(size=D)
    u, v = rng.normal(size=(D, rank)) * curvature / math.sqrt(D), rng.normal(size=(D, rank)) / math.sqrt(D)
    return q, (lambda delta: g0 + u @ (v.T @ delta))


def row_means(flat):
    """method.md: each gradient matrix averaged over its rows (a bias, one row of a column, to its mean)."""
    out, start = [], 0
    for shape in SHAPES:
        part = flat[start:start + math.prod(shape)].reshape(shape)
        start += math.prod(shape)
        out.append(part.mean(axis=0) if part.ndim == 2 else np.array([part.mean()]))
    return np.concatenate(out)


def reference_picks(q, q_u, picks):
    """Algorithm 1 as the reference runs it: gain lr * rowmean(q_U) . rowmean(q_m); each pick steps
    theta <- theta - lr * q_m (full gradient) twice, with lr = --Coreset_lr."""
    delta, remaining, order = np.zeros(D), list(range(len(q))), []
    for _ in range(picks):
        target = row_means(q_u(delta))
        gains = [REFERENCE_CORESET_LR * target @ row_means(q[m]) for m in remaining]
        best = remaining[int(np.argmax(gains))]
        order.append(best)
        remaining.remove(best)
        for _ in range(REFERENCE_APPLICATIONS):
            delta = delta - REFERENCE_CORESET_LR * q[best]
    return order


def picks_of(monkeypatch, *overrides):
    """The minibatches robust-hub's RCS picks (in order) on the constructed problem, through select_coreset."""
    q, q_u = constructed_problem()
    monkeypatch.setattr(_RCS, "batch_grads", lambda self, batches, numbers: torch.tensor(q[list(numbers)], dtype=torch.float32))
    monkeypatch.setattr(_RCS, "val_grad", lambda self, delta, round_: torch.tensor(q_u(delta.double().numpy()), dtype=torch.float32))
    config = tiny_config("coreset.fraction=0.375", *overrides)  # 3 of 8 minibatches
    model = tiny_model()
    assert [tuple(p.shape) for n, p in model.named_parameters() if n in head_linear_names(model)] == SHAPES
    selection = select_coreset(model, METHODS["acl"](config), config, 0, uint8_images(64), uint8_images(8, seed=1))
    rows = partition(64, 8, config.train.seed, 0)
    return [next(m for m in range(8) if torch.equal(rows[m], chunk)) for chunk in selection.indices.view(-1, 8)]


def test_rcs_defaults_pick_the_reference_minibatches_on_a_constructed_problem(monkeypatch):
    q, q_u = constructed_problem()
    expected = reference_picks(q, q_u, 3)
    assert picks_of(monkeypatch) == expected
    # the problem tells the settings apart: the earlier defaults, and either one alone, pick otherwise
    assert picks_of(monkeypatch, "coreset.eta=0.001", "coreset.gain_vector=full") != expected
    assert picks_of(monkeypatch, "coreset.eta=0.001") != expected
    assert picks_of(monkeypatch, "coreset.gain_vector=full") != expected


# ----------------------------------------------------------------------------- one-line bugs, pinned
def test_greedy_steps_by_eta_times_the_picked_gradient():
    generator = torch.Generator().manual_seed(0)
    q = torch.randn(6, 9, generator=generator, dtype=torch.float64)
    seen = []

    def val_grad(delta):
        seen.append(delta.clone())
        return torch.randn(9, generator=generator, dtype=torch.float64)

    order, _ = greedy_select(q, val_grad, picks=4, eta=0.3)
    assert len(seen) == 4 and torch.equal(seen[0], torch.zeros(9, dtype=torch.float64))
    for r in range(1, 4):  # q_U is evaluated at theta0 - eta * (sum of the gradients picked so far)
        assert torch.allclose(seen[r], -0.3 * q[order[:r]].sum(dim=0))


def minmax_kl(z_adv, z_nat):
    def rescale(z):
        low, high = z.min(dim=1, keepdim=True).values, z.max(dim=1, keepdim=True).values
        return (z - low) / (high - low) + FLOOR

    a, b = rescale(z_adv), rescale(z_nat)
    return (a * (a.log() - b.log())).mean()


def test_rd_attack_ascends_the_divergence():
    generator = torch.Generator().manual_seed(0)
    weights = {"normal": torch.randn(48, 10, generator=generator), "pgd": torch.randn(48, 10, generator=generator)}

    def embed(x, route):
        return x.flatten(1) @ weights[route]

    x = torch.rand(5, 3, 4, 4, generator=generator)
    eps, alpha = 8 / 255, 3 / 255
    adv = rd_attack(embed, x, eps, alpha, steps=1, kind="minmax_kl", random_start=False)
    start = x.clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(minmax_kl(embed(start, "pgd"), embed(x, "normal")), [start])
    expected = torch.min(torch.max(x + alpha * gradient.sign(), x - eps), x + eps).clamp(0, 1)
    assert torch.allclose(adv, expected)
    assert minmax_kl(embed(adv, "pgd"), embed(x, "normal")) > minmax_kl(embed(x, "pgd"), embed(x, "normal"))


def test_q_u_weights_validation_batches_by_their_size():
    """Five validation images in batches of 4 and 1: q_U is the gradient of RD over all five, i.e. each
    batch's mean weighted by its share, not the sum of the two batch means. (eps = 0: RD's attack stays at x.)"""
    config = tiny_config("train.batch_size=4", "attack.eps=0")
    model = tiny_model(seed=2)
    val = uint8_images(5, seed=3)
    search = _RCS(model, METHODS["acl"](config), config, 0, uint8_images(16), val, None)
    q_u = search.val_grad(torch.zeros(sum(math.prod(s) for s in search.shapes)), 0)

    head = [dict(model.named_parameters())[n] for n in head_linear_names(model)]
    x = val.float().div(255)
    with torch.enable_grad():
        rd = minmax_kl(model(x, route="pgd", project=True), model(x, route="normal", project=True))
        expected = torch.cat([g.reshape(-1) for g in torch.autograd.grad(rd, head)])
    assert torch.allclose(q_u, expected, rtol=1e-4, atol=1e-5)  # float32 rounding; entries reach 0.36


def test_minibatch_partition_follows_the_seed_and_the_epoch():
    base = partition(64, 8, seed=1, epoch=0)
    assert sorted(base.flatten().tolist()) == list(range(64))  # a partition of the training set
    assert torch.equal(base, partition(64, 8, seed=1, epoch=0))
    assert not torch.equal(base, partition(64, 8, seed=2, epoch=0))
    assert not torch.equal(base, partition(64, 8, seed=1, epoch=1))
    # and so does the random baseline built on it
    images = uint8_images(64)
    chosen = [select_coreset(tiny_model(), METHODS["acl"](c), c, 0, images).indices
              for c in (tiny_config("coreset.mode=random", f"train.seed={s}") for s in (1, 2))]
    assert not torch.equal(*chosen)


# ----------------------------------------------------------------------------- short runs
def test_rcs_selects_from_max_steps_per_epoch_minibatches(monkeypatch):
    seen = []
    original = _RCS.batch_grads
    monkeypatch.setattr(_RCS, "batch_grads", lambda self, batches, numbers: seen.append(batches.clone()) or
                        original(self, batches, numbers))
    config = tiny_config("coreset.fraction=0.5", "train.max_steps_per_epoch=2")
    selection = select_coreset(tiny_model(), METHODS["acl"](config), config, 0, uint8_images(64), uint8_images(8, seed=1))
    (considered,) = seen
    assert torch.equal(considered, partition(64, 8, 1, 0)[:2])  # the 2 minibatches a capped epoch trains on
    assert selection.indices.numel() == 8  # floor(0.5 * 16 / 8) = 1 minibatch of them
    random = select_coreset(tiny_model(), METHODS["acl"](config), dataclasses.replace(
        config, coreset=dataclasses.replace(config.coreset, mode="random")), 0, uint8_images(64))
    assert set(random.indices.tolist()) <= set(considered.flatten().tolist()) and random.indices.numel() == 8
