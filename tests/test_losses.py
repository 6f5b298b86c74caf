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


# --- invariant regularisation (SIR, AIR) ---------------------------------------------------------
from robust_hub.losses import air_loss, ir_divergence, sir_loss  # noqa: E402


def softmax_by_loops(scores):
    exps = [math.exp(s) for s in scores]
    return [x / sum(exps) for x in exps]


def pair_scores(a, b, t):
    """<a_k, b_k> / t of row-normalised embeddings, in float64 Python."""
    def unit(v):
        norm = math.sqrt(sum(x * x for x in v))
        return [x / norm for x in v]
    return [sum(x * y for x, y in zip(unit(u), unit(v))) / t for u, v in zip(a.tolist(), b.tolist())]


def divergence_by_loops(p, q, kind):
    if kind == "paper":  # KL(p || q)
        return sum(pk * (math.log(pk) - math.log(qk)) for pk, qk in zip(p, q))
    return sum(qk * (math.log(qk) - pk) for pk, qk in zip(p, q))  # kl_div(input=p, target=log q, log_target)


# Hand-checked case, t = 0.5, two images in 2-d. z_o = z_i = rows of the identity, z_j = [[1,0],[1,0]]:
# p_i = softmax([2, 2]) = (1/2, 1/2); p_j = softmax([2, 0]) = (a, b), a = e^2/(e^2+1), b = 1/(e^2+1).
# paper KL(p_i||p_j) = 1/2 ln(1/(4ab)) = ln((e^2+1)/(2e)) = ln cosh 1 = 0.4337808;
# reference sum p_j (log p_j - p_i) = -H(a, b) - 1/2 = -0.3653339 - 0.5 = -0.8653339.
# AIR with z~_i = z_i and z~_j = z_j: P_i = (1/2)(1/2) per image = (1/4, 1/4), P_j = (a/2, b/2):
# paper = 1/4 [ln(1/(2a)) + ln(1/(2b))] = 1/2 ln cosh 1 = 0.2168904;
# reference = sum P_j log P_j - 1/4 sum P_j = 1/2 (-H - ln 2) - 1/8 = -0.6542405.
EYE = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
SAME = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
HAND = {"paper": (0.4337808, 0.2168904), "reference": (-0.8653339, -0.6542405)}


@pytest.mark.parametrize("kind", ["paper", "reference"])
def test_sir_and_air_match_hand_computed_values(kind):
    sir_expected, air_expected = HAND[kind]
    assert sir_loss(EYE, SAME, EYE, 0.5, kind).item() == pytest.approx(sir_expected, abs=1e-6)
    assert air_loss(EYE, SAME, EYE, SAME, EYE, 0.5, kind).item() == pytest.approx(air_expected, abs=1e-6)
    # unnormalised inputs give the same values: the functions normalise the embeddings themselves
    assert sir_loss(3 * EYE, 2 * SAME, 5 * EYE, 0.5, kind).item() == pytest.approx(sir_expected, abs=1e-6)


@pytest.mark.parametrize("kind", ["paper", "reference"])
@pytest.mark.parametrize("n,d,t", [(3, 4, 0.5), (6, 8, 0.2)])
def test_sir_and_air_match_the_formulas_on_random_embeddings(kind, n, d, t):
    z_i, z_j, z_o, a_i, a_j = (torch.randn(n, d) for _ in range(5))
    p_i, p_j = softmax_by_loops(pair_scores(z_i, z_o, t)), softmax_by_loops(pair_scores(z_j, z_o, t))
    assert sir_loss(z_i, z_j, z_o, t, kind).item() == pytest.approx(divergence_by_loops(p_i, p_j, kind), rel=1e-5)
    big_p_i = [x * y for x, y in zip(softmax_by_loops(pair_scores(a_i, z_o, t)), softmax_by_loops(pair_scores(a_i, z_i, t)))]
    big_p_j = [x * y for x, y in zip(softmax_by_loops(pair_scores(a_j, z_o, t)), softmax_by_loops(pair_scores(a_j, z_j, t)))]
    expected = divergence_by_loops(big_p_i, big_p_j, kind)
    assert air_loss(a_i, a_j, z_i, z_j, z_o, t, kind).item() == pytest.approx(expected, rel=1e-5)


def test_paper_sir_is_zero_for_identical_views_and_the_variants_differ():
    z_i, z_o = torch.randn(5, 8), torch.randn(5, 8)
    assert sir_loss(z_i, z_i.clone(), z_o, 0.5, "paper").item() == pytest.approx(0.0, abs=1e-6)
    assert sir_loss(z_i, z_i.clone(), z_o, 0.5, "reference").item() != pytest.approx(0.0, abs=1e-3)
    with pytest.raises(ValueError, match="reference"):
        ir_divergence(torch.zeros(2), torch.zeros(2), "textbook")
