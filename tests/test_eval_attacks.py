"""PGD / TRADES attacks on [0,1] images: eps-ball, eps=0, huge eps, L2."""

import pytest
import torch
from test_eval_helpers import TinyBackbone, synthetic_split, trained_classifier

from robust_hub.errors import RobustHubError
from robust_hub.evaluation.attacks import PGDConfig, margin_input_gradient_norms, parse_norm, pgd, trades_attack, trades_loss


@pytest.fixture(scope="module")
def task():
    model = trained_classifier(TinyBackbone(), synthetic_split(64, "train", 0))
    test = synthetic_split(40, "test", 1)
    return model, test.images.float() / 255, test.labels


def _acc(model, x, y):
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def test_linf_pgd_stays_in_ball_and_image_range(task):
    model, x, y = task
    torch.manual_seed(0)
    x_adv = pgd(model, x, y, PGDConfig(eps=8 / 255, alpha=2 / 255, steps=5))
    assert (x_adv - x).abs().max() <= 8 / 255 + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1


def test_l2_pgd_stays_in_ball(task):
    model, x, y = task
    torch.manual_seed(0)
    x_adv = pgd(model, x, y, PGDConfig(eps=0.5, alpha=0.1, steps=5, norm="L2"))
    assert (x_adv - x).flatten(1).norm(dim=1).max() <= 0.5 + 1e-5


def test_eps_zero_gives_clean_accuracy(task):
    model, x, y = task
    x_adv = pgd(model, x, y, PGDConfig(eps=0.0, alpha=0.0, steps=20))
    assert torch.equal(x_adv, x)
    assert _acc(model, x_adv, y) == _acc(model, x, y)


def test_huge_eps_drives_accuracy_to_chance(task):
    model, x, y = task
    torch.manual_seed(0)
    assert _acc(model, x, y) > 0.9
    x_adv = pgd(model, x, y, PGDConfig(eps=1.0, alpha=0.1, steps=20))
    assert _acc(model, x_adv, y) <= 0.1 + 0.05


def test_pgd_accuracy_decreases_with_eps(task):
    model, x, y = task
    accs = []
    for eps in (0.0, 8 / 255, 32 / 255):
        torch.manual_seed(0)
        accs.append(_acc(model, pgd(model, x, y, PGDConfig(eps=eps, alpha=eps / 4, steps=10)), y))
    assert accs[0] >= accs[1] >= accs[2] and accs[2] < accs[0]


def test_trades_attack_increases_kl_and_loss_is_finite(task):
    model, x, y = task
    torch.manual_seed(0)
    x_adv = trades_attack(model, x, PGDConfig(eps=8 / 255, alpha=2 / 255, steps=10))
    assert (x_adv - x).abs().max() <= 8 / 255 + 1e-6
    with torch.no_grad():
        clean, adv = model(x), model(x_adv)
        near = model((x + 0.001 * torch.randn_like(x)).clamp(0, 1))
    assert trades_loss(clean, adv, y, 6.0) > trades_loss(clean, near, y, 6.0)
    # beta = 0 is plain cross-entropy
    assert torch.isclose(trades_loss(clean, adv, y, 0.0), torch.nn.functional.cross_entropy(clean, y))


def test_attacks_do_not_touch_parameters_or_mode(task):
    model, x, y = task
    before = [p.clone() for p in model.parameters()]
    pgd(model, x, y, PGDConfig(steps=2))
    assert not model.training
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in model.parameters())


def test_margin_gradient_detects_rounding_input(task):
    model, x, y = task
    assert (margin_input_gradient_norms(model, x, y) > 0).all()
    rounding = torch.nn.Sequential(torch.nn.Module(), model)
    rounding[0].forward = lambda t: torch.round(t * 4) / 4
    assert (margin_input_gradient_norms(rounding, x, y) == 0).all()


def test_bad_norm_and_eps_are_user_errors():
    with pytest.raises(RobustHubError):
        parse_norm("l7")
    with pytest.raises(RobustHubError):
        PGDConfig(eps=-1.0)


def test_linf_pgd_starts_uniformly_in_the_whole_ball():
    from robust_hub.evaluation.attacks import random_init

    eps = 8 / 255
    torch.manual_seed(0)
    delta = random_init(torch.zeros(64, 3, 32, 32), eps, "linf")
    assert delta.abs().max() <= eps
    # U(-eps, eps): both signs equally, spread to the ball's faces, variance eps^2 / 3.
    assert (delta > 0).float().mean().item() == pytest.approx(0.5, abs=0.01)
    assert delta.min() < -0.99 * eps and delta.max() > 0.99 * eps
    assert delta.var().item() == pytest.approx(eps ** 2 / 3, rel=0.02)


def test_trades_starts_at_x_plus_0_001_standard_normal(task):
    """With no step (alpha 0) the one iteration returns the start: clip(x + 0.001 N(0, 1)) inside the ball."""
    model, x, _ = task
    x = 0.25 + 0.5 * x  # away from the box edges, so the clip does not hide the start
    torch.manual_seed(5)
    start = trades_attack(model, x, PGDConfig(eps=8 / 255, alpha=0.0, steps=1))
    torch.manual_seed(5)
    assert torch.allclose(start, x + 0.001 * torch.randn_like(x), atol=1e-7)


def test_trades_loss_is_cross_entropy_plus_beta_times_the_per_image_kl():
    torch.manual_seed(0)
    clean, adv, y, beta = torch.randn(6, 10), torch.randn(6, 10), torch.randint(0, 10, (6,)), 6.0
    p, q = clean.softmax(1), adv.softmax(1)
    ce = -clean.log_softmax(1)[torch.arange(6), y].mean()
    kl_per_image = (p * (p.log() - q.log())).sum(1)
    assert trades_loss(clean, adv, y, beta).item() == pytest.approx((ce + beta * kl_per_image.mean()).item(), rel=1e-5)
