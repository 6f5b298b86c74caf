"""Invariant regularisation (Xu et al., NeurIPS 2023): SIR and AIR over a batch.

All embeddings are L2-normalised here. ``diag(A, B)_k = <A_k, B_k> / t`` and every softmax runs
over the batch index k, so each term compares two distributions over the N images of the batch.

Two divergences are offered (method.md, "Invariant regularisation"):

* ``"paper"``: the textbook KL(p_i || p_j) = sum_k p_i,k (log p_i,k - log p_j,k).
* ``"reference"``: what the reference code evaluates with
  ``kl_div(input=p_i, target=log p_j, log_target=True, reduction="sum")``, namely
  sum_k p_j,k (log p_j,k - p_i,k). kl_div expects a *log*-probability as its input and is handed a
  probability, so the result is not a KL. The papers' tables were produced with it, which is why
  it is robust-hub's default.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IR_DIVERGENCES = ("reference", "paper")


def pair_log_softmax(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """log softmax_k(<a_k, b_k> / t) of row-paired, L2-normalised embeddings."""
    a, b = F.normalize(a.float(), dim=1), F.normalize(b.float(), dim=1)
    return torch.log_softmax((a * b).sum(dim=1) / temperature, dim=0)


def ir_divergence(log_p: torch.Tensor, log_q: torch.Tensor, kind: str = "reference") -> torch.Tensor:
    """The divergence between p (the i-view distribution) and q (the j-view one), given as logs."""
    if kind == "paper":
        return (log_p.exp() * (log_p - log_q)).sum()
    if kind == "reference":
        return (log_q.exp() * (log_q - log_p.exp())).sum()
    raise ValueError(f"IR divergence must be one of {IR_DIVERGENCES}, got {kind!r}")


def sir_loss(z_i: torch.Tensor, z_j: torch.Tensor, z_o: torch.Tensor, temperature: float = 0.5,
             kind: str = "reference") -> torch.Tensor:
    """Standard IR: p_u = softmax(diag(z_u, z_o)) for the clean views u in {i, j}; D(p_i, p_j)."""
    return ir_divergence(pair_log_softmax(z_i, z_o, temperature), pair_log_softmax(z_j, z_o, temperature), kind)


def air_loss(adv_i: torch.Tensor, adv_j: torch.Tensor, z_i: torch.Tensor, z_j: torch.Tensor, z_o: torch.Tensor,
             temperature: float = 0.5, kind: str = "reference") -> torch.Tensor:
    """Adversarial IR: P_u = softmax(diag(z~_u, z_o)) * softmax(diag(z~_u, z_u)); D(P_i, P_j).

    P_u is an elementwise product of two distributions (it does not sum to 1), as in method.md.
    """
    log_p_i = pair_log_softmax(adv_i, z_o, temperature) + pair_log_softmax(adv_i, z_i, temperature)
    log_p_j = pair_log_softmax(adv_j, z_o, temperature) + pair_log_softmax(adv_j, z_j, temperature)
    return ir_divergence(log_p_i, log_p_j, kind)
