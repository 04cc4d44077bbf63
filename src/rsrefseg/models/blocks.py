"""Attention and MLP blocks of the prompter, in SAM's post-norm residual layout.

Every op is ``x = norm(x + op(x, ...))`` with its own weights. Positional embeddings are added to
queries and keys, never to values (SAM's two-way transformer convention).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Attention(nn.Module):
    """Multi-head attention between a query width and a (possibly different) key/value width.

    Args:
        q_dim: width of the queries and of the output.
        kv_dim: width of keys and values.
        internal_dim: width of the q/k/v projections (split over the heads).
        num_heads: number of heads; must divide ``internal_dim``.
    """

    def __init__(self, q_dim: int, kv_dim: int, *, internal_dim: int = 512, num_heads: int = 8) -> None:
        super().__init__()
        if internal_dim % num_heads:
            raise ValueError(f"internal_dim={internal_dim} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.q_proj = nn.Linear(q_dim, internal_dim)
        self.k_proj = nn.Linear(kv_dim, internal_dim)
        self.v_proj = nn.Linear(kv_dim, internal_dim)
        self.out_proj = nn.Linear(internal_dim, q_dim)

    def _split_heads(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        return x.reshape(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    def forward(self, q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
        """Attend.

        Args:
            q: B×Nq×q_dim queries.
            k: B×Nk×kv_dim keys.
            v: B×Nk×kv_dim values.
            key_padding_mask: optional B×Nk bool, True where a key is padding and must be ignored.
                Every row needs at least one valid key.

        Returns:
            B×Nq×q_dim.
        """
        q, k, v = (
            self._split_heads(self.q_proj(q)),
            self._split_heads(self.k_proj(k)),
            self._split_heads(self.v_proj(v)),
        )
        attn_mask = None
        if key_padding_mask is not None:
            attn_mask = ~key_padding_mask[:, None, None, :]  # SDPA keeps positions where the mask is True
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        b, h, n, c = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, n, h * c))


class MLP(nn.Module):
    """Linear(dim→hidden) → GELU → Linear(hidden→dim). Input and output: B×N×dim."""

    def __init__(self, dim: int, *, hidden_dim: int = 512) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class AttentionLayer(nn.Module):
    """``x = LayerNorm(x + Attention(x + x_pe, context + context_pe, context))``.

    Self-attention is the special case ``context is x``.
    """

    def __init__(self, q_dim: int, kv_dim: int, *, internal_dim: int, num_heads: int) -> None:
        super().__init__()
        self.attn = Attention(q_dim, kv_dim, internal_dim=internal_dim, num_heads=num_heads)
        self.norm = nn.LayerNorm(q_dim)

    def forward(
        self,
        x: Tensor,
        x_pe: Tensor | None,
        context: Tensor,
        context_pe: Tensor | None,
        key_padding_mask: Tensor | None = None,
    ) -> Tensor:
        """Args: x B×N×q_dim; context B×M×kv_dim; PEs broadcastable to them; mask B×M. Returns B×N×q_dim."""
        q = x if x_pe is None else x + x_pe
        k = context if context_pe is None else context + context_pe
        return self.norm(x + self.attn(q, k, context, key_padding_mask))


class MLPLayer(nn.Module):
    """``x = LayerNorm(x + MLP(x))``. Input and output: B×N×dim."""

    def __init__(self, dim: int, *, hidden_dim: int) -> None:
        super().__init__()
        self.mlp = MLP(dim, hidden_dim=hidden_dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x + self.mlp(x))


class CrossAttentionMLP(nn.Module):
    """Cross-attention then an MLP, each post-norm residual: the "(+MLP)" unit of docs/method.md §2.1."""

    def __init__(self, q_dim: int, kv_dim: int, *, internal_dim: int, num_heads: int, mlp_dim: int) -> None:
        super().__init__()
        self.cross = AttentionLayer(q_dim, kv_dim, internal_dim=internal_dim, num_heads=num_heads)
        self.mlp = MLPLayer(q_dim, hidden_dim=mlp_dim)

    def forward(
        self,
        x: Tensor,
        x_pe: Tensor | None,
        context: Tensor,
        context_pe: Tensor | None,
        key_padding_mask: Tensor | None = None,
    ) -> Tensor:
        """Args as :class:`AttentionLayer`. Returns B×N×q_dim."""
        return self.mlp(self.cross(x, x_pe, context, context_pe, key_padding_mask))


def masked_adaptive_avg_pool(tokens: Tensor, padding_mask: Tensor | None, num_bins: int) -> Tensor:
    """Adaptive average pooling over the token axis that only sees each sample's valid prefix.

    Matches ``F.adaptive_avg_pool1d`` applied to the valid tokens of every sample, so the result does
    not depend on how much padding the batch carries.

    Args:
        tokens: B×L×C.
        padding_mask: B×L bool, True at padding; valid tokens must form a prefix. None = all valid.
        num_bins: number of output tokens.

    Returns:
        B×num_bins×C.
    """
    b, length, _ = tokens.shape
    if padding_mask is None:
        lengths = torch.full((b,), length, device=tokens.device)
    else:
        lengths = (~padding_mask).sum(dim=1)
    bins = torch.arange(num_bins, device=tokens.device)
    # adaptive pooling bin i covers [floor(i·n/k), ceil((i+1)·n/k))
    start = torch.div(bins[None] * lengths[:, None], num_bins, rounding_mode="floor")
    end = torch.div((bins[None] + 1) * lengths[:, None] + num_bins - 1, num_bins, rounding_mode="floor")
    pos = torch.arange(length, device=tokens.device)
    weights = ((pos[None, None] >= start[..., None]) & (pos[None, None] < end[..., None])).to(tokens.dtype)
    weights = weights / weights.sum(dim=-1, keepdim=True).clamp_min(1)
    return weights @ tokens


def resize_grid_pe(pe: Tensor, grid_size: int) -> Tensor:
    """A learned C×g×g positional embedding as 1×C×g'×g', bicubically resized when g' ≠ g."""
    pe = pe[None]
    if pe.shape[-1] != grid_size:
        pe = F.interpolate(pe, size=(grid_size, grid_size), mode="bicubic", align_corners=False)
    return pe
