"""The prompter's output heads: sparse prompt tokens and the dense mask prompt."""

from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class DensePromptHead(nn.Module):
    """Turn activated image tokens into mask-prompt logits by cosine with the sentence embedding.

    reshape → Conv3×3(C→C/2) → BN → GELU → Conv3×3(C/2→E) → bilinear ×(M/g) → cos(·, t)·exp(s) + b.

    Args:
        vision_dim: C, width of the image tokens.
        embed_dim: E, width of the pooled sentence embedding t (C for SigLIP).
        mask_size: M, side of SAM's mask input (4 × its image-embedding grid).
    """

    def __init__(self, *, vision_dim: int, embed_dim: int, mask_size: int) -> None:
        super().__init__()
        self.mask_size = mask_size
        self.conv1 = nn.Conv2d(vision_dim, vision_dim // 2, kernel_size=3, padding=1)
        self.norm = nn.BatchNorm2d(vision_dim // 2)
        self.conv2 = nn.Conv2d(vision_dim // 2, embed_dim, kernel_size=3, padding=1)

    def project(self, tokens: Tensor, grid_size: int) -> Tensor:
        """B×g²×C image tokens → B×E×g×g features, in the space the sentence embedding is read in."""
        b, _, c = tokens.shape
        x = tokens.transpose(1, 2).reshape(b, c, grid_size, grid_size)
        return self.conv2(F.gelu(self.norm(self.conv1(x))))

    def forward(
        self, tokens: Tensor, grid_size: int, sentence: Tensor, logit_scale: Tensor, logit_bias: Tensor
    ) -> Tensor:
        """Args:
            tokens: B×g²×C image tokens (row-major grid).
            grid_size: g.
            sentence: B×E pooled sentence embedding.
            logit_scale: scalar log-scale (CLIP's); logit_bias: scalar bias (0 for OpenAI-style CLIP).

        Returns:
            B×1×M×M logits.
        """
        x = self.project(tokens, grid_size)
        size = (self.mask_size, self.mask_size)
        # cos(up(x), t) = up(x)·t̂ / |up(x)|, and up() is linear per channel, so the numerator is
        # upsampled after the dot product at g×g — exact, and C× cheaper than at M×M
        direction = F.normalize(sentence, dim=-1)[:, :, None, None]
        dot = F.interpolate(
            (x * direction).sum(dim=1, keepdim=True), size=size, mode="bilinear", align_corners=True
        )
        cos = dot / upsampled_norm(x, self.mask_size).clamp_min(1e-12)
        return cos * logit_scale.exp() + logit_bias


def bilinear_weights(source: int, target: int, *, device: torch.device, dtype: torch.dtype) -> Tensor:
    """target×source matrix R of 1-D linear interpolation with aligned corners: up(v) = R·v.

    Built by interpolating the identity, so its weights are PyTorch's own.
    """
    eye = torch.eye(source, device=device, dtype=dtype)[None]
    return F.interpolate(eye, size=target, mode="linear", align_corners=True)[0].T


def upsampled_norm(x: Tensor, size: int) -> Tensor:
    """|up(x)| over channels, where up() is bilinear (aligned corners) g×g → size×size; without up(x).

    up(x)_c = R·x_c·Rᵀ (R: size×g), so |up(x)|²[y, z] = Σ_{v,w} R[z,v]·R[z,w]·K[y,v,w] with
    K[y,v,w] = Σ_c u_c[y,v]·u_c[y,w] and u_c = R·x_c (rows upsampled only): the channel sum runs at
    size×g instead of size×size, a few matmuls where the direct form materialises B×C×size×size
    (and its backward) — the dense head's largest cost at the tiny sizes. Equal to the direct form
    to float rounding; computed in float32 (or float64) whatever the autocast.

    Args:
        x: B×C×g×g.
        size: output side.

    Returns:
        B×1×size×size, float32 (float64 for a float64 x).
    """
    device = x.device.type
    # no autocast on a device without one (the meta device of shape checks)
    outside_autocast = (
        torch.autocast(device, enabled=False) if torch.amp.is_autocast_available(device) else nullcontext()
    )
    with outside_autocast:
        x = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        r = bilinear_weights(x.shape[-1], size, device=x.device, dtype=x.dtype)
        rows = torch.einsum("yh,bchw->bycw", r, x)  # B×size×C×g: u, channels before columns
        gram = rows.transpose(-1, -2) @ rows  # B×size×g×g: K
        squared = ((r @ gram) * r).sum(-1)  # B×size×size: Σ_w R[z,w]·(R·K_y)[z,w]
        # below 1e-24 (a zero map, or rounding below zero) the clamp passes no gradient, as the
        # direct norm's backward does at 0, instead of sqrt's infinite one
        return squared.clamp_min(1e-24).sqrt()[:, None]
