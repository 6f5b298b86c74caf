import pytest
import torch

import robust_hub
from robust_hub.attacks import contrastive_pgd
from robust_hub.config import RunConfig, AttackConfig
from robust_hub.losses import nt_xent
from robust_hub.training.methods import ACL


@pytest.fixture
def model():
    return robust_hub.create_backbone("robust_resnet_tiny").eval()


def pair_loss(model):
    return lambda a, b: nt_xent(*model(torch.cat([a, b]), route="pgd", project=True).chunk(2))


@pytest.mark.parametrize("eps,steps", [(8 / 255, 5), (2 / 255, 3), (0.0, 2)])
def test_attack_stays_in_eps_ball_and_pixel_range(model, eps, steps):
    x_i = torch.rand(6, 3, 32, 32)
    x_j = torch.rand(6, 3, 32, 32)
    x_i[0] = 0.0  # pixels at the box edges must stay inside [0, 1]
    x_j[0] = 1.0
    adv_i, adv_j = contrastive_pgd(pair_loss(model), x_i, x_j, eps=eps, alpha=2 / 255, steps=steps)
    for clean, adv in ((x_i, adv_i), (x_j, adv_j)):
        assert (adv - clean).abs().max() <= eps + 1e-6
        assert adv.min() >= 0 and adv.max() <= 1
        assert not adv.requires_grad


def test_attack_raises_the_contrastive_loss(model):
    x_i, x_j = torch.rand(8, 3, 32, 32), torch.rand(8, 3, 32, 32)
    loss = pair_loss(model)
    with torch.no_grad():
        clean = loss(x_i, x_j).item()
        noise = loss(*(((x + torch.empty_like(x).uniform_(-8 / 255, 8 / 255)).clamp(0, 1)) for x in (x_i, x_j))).item()
    adv_i, adv_j = contrastive_pgd(loss, x_i, x_j, steps=5)
    with torch.no_grad():
        attacked = loss(adv_i, adv_j).item()
    assert attacked > clean + 0.01
    assert attacked > noise + 0.01


def test_attack_touches_no_parameter_gradient_and_restores_train_mode(model):
    model.train()
    method = ACL(RunConfig(attack=AttackConfig(steps=2)))
    from contextlib import nullcontext

    method.attack(model, torch.rand(4, 3, 32, 32), torch.rand(4, 3, 32, 32), nullcontext)
    assert all(p.grad is None for p in model.parameters())
    assert model.training
