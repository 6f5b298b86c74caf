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


def _batch_norm_modes(model):
    """Records, for every batch norm called, whether it ran in training mode (batch statistics)."""
    modes = []
    hooks = [m.register_forward_pre_hook(lambda module, _: modes.append(module.training))
             for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    return modes, hooks


@pytest.mark.parametrize("name", ["acl", "dynacl"])
def test_the_attack_uses_running_statistics_and_leaves_every_buffer_untouched(name):
    # Train mode would normalise with the batch's statistics and move every running mean and
    # variance (and num_batches_tracked) once per PGD step; the attack must do neither.
    from robust_hub.config import MethodConfig
    from robust_hub.training.fast import FastPath
    from robust_hub.training.methods import METHODS

    model = robust_hub.create_backbone("robust_resnet_tiny").train()
    model(torch.rand(8, 3, 16, 16), route="pgd", project=True)  # statistics no longer at their initial values
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    method = METHODS[name](RunConfig(attack=AttackConfig(steps=3), method=MethodConfig(name=name)))
    modes, hooks = _batch_norm_modes(model)
    for fast in (FastPath(), FastPath(channels_last=True)):
        method.attack(model, *(fast.images(torch.rand(8, 3, 16, 16)) for _ in range(2)), fast.autocast_factory())
    for hook in hooks:
        hook.remove()
    assert modes and not any(modes)  # every batch norm of every PGD step ran in eval mode
    assert all(torch.equal(v, buffers[k]) for k, v in model.named_buffers())
    assert model.training  # and the trainer's mode is back afterwards


def test_every_point_the_attack_takes_a_gradient_at_is_an_image_near_the_clean_view(model):
    """The random start too: its gradient is taken at clip_[0,1](x + U(-eps, eps)), not outside the pixel box."""
    x_i, x_j = torch.rand(4, 3, 32, 32), torch.rand(4, 3, 32, 32)
    x_i[:2], x_j[:2] = 0.0, 1.0
    eps, seen = 8 / 255, []
    loss = pair_loss(model)

    def recording_loss(a, b):
        seen.append((a.detach().clone(), b.detach().clone()))
        return loss(a, b)

    torch.manual_seed(3)
    contrastive_pgd(recording_loss, x_i, x_j, eps=eps, alpha=2 / 255, steps=3)
    torch.manual_seed(3)
    start = (torch.stack([x_i, x_j]) + torch.empty(2, *x_i.shape).uniform_(-eps, eps)).clamp(0, 1)
    assert len(seen) == 3
    assert torch.equal(seen[0][0], start[0]) and torch.equal(seen[0][1], start[1])
    for a, b in seen:
        for clean, point in ((x_i, a), (x_j, b)):
            assert point.min() >= 0 and point.max() <= 1
            assert (point - clean).abs().max() <= eps + 1e-6
