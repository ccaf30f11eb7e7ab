"""The precomputed-region image encoder of vse_infty ("basic" precomp type), shared by ESA, ESL, X-Dim.

Per region: fc(x) + mlp(x), where mlp = Linear -> BatchNorm1d -> ReLU -> Linear. The MLP also owns a
second BatchNorm1d that the forward pass never uses; it is kept because official checkpoints hold it
(`mlp.bns.1.*`) and we load them strictly.
"""

from __future__ import annotations

import torch
from torch import nn


class TwoLayerMLP(nn.Module):
    """Linear(in, hidden) -> BN -> ReLU -> Linear(hidden, out), with the official key names."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int, num_layers: int = 2) -> None:
        super().__init__()
        if num_layers != 2:
            raise ValueError(f"only the 2-layer MLP of the official code is supported, got {num_layers}")
        dims_in = [in_dim, hidden]
        dims_out = [hidden, out_dim]
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims_in, dims_out))
        self.bns = nn.ModuleList(nn.BatchNorm1d(o) for o in dims_out)  # bns[1] is unused in forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        h = x.reshape(-1, shape[-1])
        h = torch.relu(self.bns[0](self.layers[0](h)))
        h = self.layers[1](h)
        return h.reshape(*shape[:-1], -1)


class PrecompRegionEncoder(nn.Module):
    """Region features (B, R, img_dim) -> (B, R, embed): fc(x) + mlp(x)."""

    def __init__(self, img_dim: int = 2048, embed_size: int = 1024) -> None:
        super().__init__()
        self.fc = nn.Linear(img_dim, embed_size)
        self.mlp = TwoLayerMLP(img_dim, embed_size // 2, embed_size, 2)
        r = (6.0 / (img_dim + embed_size)) ** 0.5  # Xavier uniform, as vse_infty's init_weights
        nn.init.uniform_(self.fc.weight, -r, r)
        nn.init.zeros_(self.fc.bias)

    def region_features(self, regions: torch.Tensor) -> torch.Tensor:
        return self.fc(regions) + self.mlp(regions)

    def forward(self, regions: torch.Tensor) -> torch.Tensor:
        return self.region_features(regions)


def l2norm(x: torch.Tensor, dim: int = -1, eps: float = 1e-8) -> torch.Tensor:
    """x / (||x|| + eps), eps added to the norm as in the official code (not under the root)."""
    return x / (x.pow(2).sum(dim=dim, keepdim=True).sqrt() + eps)
