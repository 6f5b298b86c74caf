"""Small builders shared by tests."""

import torch


def with_distinct_bn_statistics(model: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    """Give every BN its own running statistics so that routes and round trips are really exercised."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            if name.endswith("running_mean"):
                buffer.copy_(0.1 * torch.randn(buffer.shape, generator=generator))
            elif name.endswith("running_var"):
                buffer.copy_(0.5 + torch.rand(buffer.shape, generator=generator))
    return model.eval()
