"""segment-anything's hand-written attention as one ``F.scaled_dot_product_attention`` call.

segment-anything (SAM 1) computes attention step by step in both places it attends: the image
encoder's ``Attention`` forms ``(q · scale) kᵀ``, adds the decomposed relative-position bias, takes
the softmax and multiplies by v; the mask decoder's ``TwoWayTransformer`` attention does the same
without a bias. The subclasses here compute the same function with PyTorch's fused attention: the
relative-position bias becomes an additive float ``attn_mask`` (computed from the *unscaled* q, as
segment-anything adds it after scaling), so GPUs can run the memory-efficient kernel and CPUs the
fused flash kernel instead of three separate ops with the full attention matrix in between.

They add no parameters and read the same attributes, so :func:`use_fused_attention` switches a
built model in place by changing each attention module's class: parameter names, state-dict keys
and peft LoRA wrappers around ``qkv`` stay exactly where they were.

Exactness: the fused kernels sum in a different order (the bias is added as one term, the scale is
applied inside the kernel), so results differ from the reference in the last bits (≈ 1e-7 relative
in fp32), not bit-identical.

The other backbones already attend with fused kernels: SAM 2.1's Hiera and its decoder call
``F.scaled_dot_product_attention``; open_clip's ``ResidualAttentionBlock`` calls
``nn.MultiheadAttention`` with ``need_weights=False``, which runs it too; timm's ViT attention
(SigLIP) uses it while ``timm.layers.use_fused_attn()`` is true (the default; ``TIMM_FUSED_ATTN=0``
turns it off).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from segment_anything.modeling import image_encoder, transformer
from torch import Tensor, nn


def decomposed_rel_pos_bias(
    q: Tensor, rel_pos_h: Tensor, rel_pos_w: Tensor, q_size: tuple[int, int], k_size: tuple[int, int]
) -> Tensor:
    """The additive attention bias of MViTv2's decomposed relative positions (segment-anything's
    ``add_decomposed_rel_pos`` without the attention map it is added to).

    Args:
        q: B×heads×(q_h·q_w)×c unscaled queries.
        rel_pos_h, rel_pos_w: (2·size − 1)×c relative-position tables of the two axes.
        q_size, k_size: the query and key grids (q_h, q_w), (k_h, k_w).

    Returns:
        B×heads×(q_h·q_w)×(k_h·k_w) bias: ``q · R_h[Δrow] + q · R_w[Δcol]``.
    """
    (q_h, q_w), (k_h, k_w) = q_size, k_size
    r_h = image_encoder.get_rel_pos(q_h, k_h, rel_pos_h)  # q_h×k_h×c
    r_w = image_encoder.get_rel_pos(q_w, k_w, rel_pos_w)  # q_w×k_w×c
    b, heads, _, c = q.shape
    grid_q = q.reshape(b * heads, q_h, q_w, c)
    rel_h = torch.einsum("bhwc,hkc->bhwk", grid_q, r_h)  # (b·heads)×q_h×q_w×k_h
    rel_w = torch.einsum("bhwc,wkc->bhwk", grid_q, r_w)  # (b·heads)×q_h×q_w×k_w
    return (rel_h[..., :, None] + rel_w[..., None, :]).reshape(b, heads, q_h * q_w, k_h * k_w)


class FusedImageEncoderAttention(image_encoder.Attention):
    """segment-anything's image-encoder attention (relative positions, windowed or global) via SDPA."""

    def forward(self, x: Tensor) -> Tensor:
        """Args: x B×H×W×C tokens of one window (or the whole grid). Returns B×H×W×C."""
        b, h, w, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, h * w, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        bias = None
        if self.use_rel_pos:
            bias = decomposed_rel_pos_bias(q, self.rel_pos_h, self.rel_pos_w, (h, w), (h, w))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale)
        return self.proj(out.transpose(1, 2).reshape(b, h, w, -1))


class FusedTwoWayAttention(transformer.Attention):
    """segment-anything's mask-decoder attention (token ↔ image, optional downsampled width) via SDPA."""

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """Args: q B×N_q×C, k and v B×N_k×C. Returns B×N_q×C."""
        q = self._separate_heads(self.q_proj(q), self.num_heads)
        k = self._separate_heads(self.k_proj(k), self.num_heads)
        v = self._separate_heads(self.v_proj(v), self.num_heads)
        # SDPA's default scale is 1/√(head width), segment-anything's
        return self.out_proj(self._recombine_heads(F.scaled_dot_product_attention(q, k, v)))


#: reference class → fused class (and back)
_FUSED = {
    image_encoder.Attention: FusedImageEncoderAttention,
    transformer.Attention: FusedTwoWayAttention,
}
_REFERENCE = {fused: reference for reference, fused in _FUSED.items()}


def use_fused_attention(module: nn.Module, enabled: bool = True) -> int:
    """Switch every segment-anything attention under ``module`` to the fused (or back to the reference)
    computation, in place.

    Only the class changes: parameters, buffers, state-dict keys and LoRA wrappers are untouched.

    Returns:
        The number of attention modules switched.
    """
    table = _FUSED if enabled else _REFERENCE
    switched = 0
    for child in module.modules():
        target = table.get(type(child))
        if target is not None:
            child.__class__ = target
            switched += 1
    return switched
