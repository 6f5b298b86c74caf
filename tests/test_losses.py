import math

import pytest
import torch

from robust_hub.losses import acl_loss, nt_xent


def nt_xent_by_loops(z_i, z_j, t):
    """NT-Xent written from its definition, one row at a time, in float64 Python."""
    rows = [r.tolist() for r in torch.cat([z_i, z_j]).double()]
    n2 = len(rows)

    def cos(a, b):
        dot = sum(x * y for x, y in zip(a, b))
        return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))

    total = 0.0
    for a in range(n2):
        positive = (a + n2 // 2) % n2
        denom = sum(math.exp(cos(rows[a], rows[k]) / t) for k in range(n2) if k != a)
        total += -math.log(math.exp(cos(rows[a], rows[positive]) / t) / denom)
    return total / n2


@pytest.mark.parametrize("n,d,t", [(2, 3, 0.5), (5, 8, 0.5), (4, 16, 0.1)])
def test_nt_xent_matches_definition(n, d, t):
    z_i, z_j = torch.randn(n, d), torch.randn(n, d)
    assert nt_xent(z_i, z_j, t).item() == pytest.approx(nt_xent_by_loops(z_i, z_j, t), rel=1e-5)


def test_nt_xent_is_low_for_aligned_views_and_high_for_swapped():
    z = torch.randn(8, 16)
    aligned = nt_xent(z, z + 0.01 * torch.randn_like(z))
    mismatched = nt_xent(z, z.roll(1, dims=0))
    assert aligned < mismatched


@pytest.mark.parametrize("w", [0.0, 0.25, -0.5])
def test_acl_loss_weights_the_two_streams(w):
    clean = (torch.randn(4, 6), torch.randn(4, 6))
    adv = (torch.randn(4, 6), torch.randn(4, 6))
    expected = ((1 - w) * nt_xent_by_loops(*clean, 0.5) + (1 + w) * nt_xent_by_loops(*adv, 0.5)) / 2
    assert acl_loss(clean, adv, adv_weight=w, temperature=0.5).item() == pytest.approx(expected, rel=1e-5)


def test_nt_xent_goes_down_when_optimised():
    z_i = torch.randn(16, 8, requires_grad=True)
    z_j = torch.randn(16, 8, requires_grad=True)
    optimiser = torch.optim.SGD([z_i, z_j], lr=0.5)
    first = nt_xent(z_i, z_j).item()
    for _ in range(30):
        optimiser.zero_grad()
        loss = nt_xent(z_i, z_j)
        loss.backward()
        optimiser.step()
    assert loss.item() < first - 0.5
