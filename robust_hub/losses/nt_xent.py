"""NT-Xent, SimCLR's normalised-temperature cross-entropy."""

import torch
import torch.nn.functional as F


def nt_xent(z_i: torch.Tensor, z_j: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """Mean over the 2N rows of -log(exp(s_pos/t) / sum_{k != self} exp(s_k/t)).

    ``z_i[k]`` and ``z_j[k]`` are the embeddings of two views of image k; similarities are
    cosine, every other row of the 2N is a negative.
    """
    # In fp32 even under autocast: the similarities are a negligible cost next to the network.
    with torch.autocast(z_i.device.type, enabled=False):
        z = F.normalize(torch.cat([z_i, z_j]).float(), dim=1)
        n = z_i.shape[0]
        logits = z @ z.T / temperature
        logits.fill_diagonal_(float("-inf"))
        positives = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
        return F.cross_entropy(logits, positives)
